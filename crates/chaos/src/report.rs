//! Per-scenario figures, the final table and its JSON form.

use serde::Serialize;

/// The outcome of one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    /// "ok" or "FAILED".
    pub result: String,
    /// Why it failed (empty when ok).
    pub failure: String,
    /// What was injected, in words.
    pub injected: String,
    /// Fault cleared -> first accepted share (or first new event stored).
    pub recovery_s: Option<f64>,
    /// What `recovery_s` measures.
    pub recovery_of: String,
    pub lost: Option<usize>,
    pub duplicates: Option<usize>,
    pub pool_restarts: Option<usize>,
    pub journaled_events: Option<usize>,
    pub wall_s: f64,
    /// Further measured figures, in order.
    pub figures: Vec<(String, String)>,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.result == "ok"
    }
}

fn cell(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}"))
}

fn count(value: Option<usize>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

/// The final table (plain text, aligned).
pub fn table(reports: &[ScenarioReport]) -> String {
    let header = [
        "scenario",
        "result",
        "recovery s",
        "lost",
        "dup",
        "restarts",
        "events",
        "wall s",
    ];
    let rows: Vec<[String; 8]> = reports
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.result.clone(),
                cell(r.recovery_s),
                count(r.lost),
                count(r.duplicates),
                count(r.pool_restarts),
                count(r.journaled_events),
                format!("{:.1}", r.wall_s),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.len());
        }
    }
    let line = |values: Vec<&str>| {
        values
            .iter()
            .zip(&widths)
            .map(|(value, width)| format!("{value:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = String::new();
    out.push_str(&line(header.to_vec()));
    out.push('\n');
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// One scenario's block: the fault and every figure.
pub fn block(report: &ScenarioReport) -> String {
    let mut out = format!("--- {} : {}\n", report.name, report.result);
    out.push_str(&format!("    injected: {}\n", report.injected));
    if let Some(recovery) = report.recovery_s {
        out.push_str(&format!(
            "    recovery: {recovery:.2} s ({})\n",
            report.recovery_of
        ));
    }
    out.push_str(&format!(
        "    events: {} journaled, {} lost, {} duplicated; pool restarts: {}\n",
        count(report.journaled_events),
        count(report.lost),
        count(report.duplicates),
        count(report.pool_restarts)
    ));
    for (name, value) in &report.figures {
        out.push_str(&format!("    {name}: {value}\n"));
    }
    if !report.failure.is_empty() {
        out.push_str(&format!("    FAILURE: {}\n", report.failure));
    }
    out.push_str(&format!("    wall time: {:.1} s\n", report.wall_s));
    out
}

/// The JSON document written to `CHAOS_REPORT`.
pub fn json(reports: &[ScenarioReport]) -> String {
    #[derive(Serialize)]
    struct Document<'a> {
        passed: usize,
        failed: usize,
        scenarios: &'a [ScenarioReport],
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    let document = Document {
        passed,
        failed: reports.len() - passed,
        scenarios: reports,
    };
    serde_json::to_string_pretty(&document).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json_list_every_scenario() {
        let reports = vec![
            ScenarioReport {
                name: "redis-down".into(),
                result: "ok".into(),
                recovery_s: Some(0.25),
                lost: Some(0),
                duplicates: Some(0),
                pool_restarts: Some(0),
                ..ScenarioReport::default()
            },
            ScenarioReport {
                name: "pool-sigkill".into(),
                result: "FAILED".into(),
                ..ScenarioReport::default()
            },
        ];
        let text = table(&reports);
        assert!(text.contains("redis-down    ok"), "{text}");
        assert!(text.contains("0.25"));
        let parsed: serde_json::Value = serde_json::from_str(&json(&reports)).unwrap();
        assert_eq!(parsed["passed"], 1);
        assert_eq!(parsed["failed"], 1);
        assert_eq!(parsed["scenarios"][1]["name"], "pool-sigkill");
    }
}
