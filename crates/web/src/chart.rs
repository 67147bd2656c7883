//! A hashrate chart as inline SVG: drawn by the server, so the page needs
//! no script and no chart library.

use crate::format;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;

/// An area chart of `points` (hashes per second, oldest first, evenly
/// spaced over `span_label`), with its peak written on the axis and a text
/// alternative for screen readers.
pub fn hashrate_chart(points: &[f64], span_label: &str) -> String {
    let peak = points.iter().copied().fold(0.0_f64, f64::max);
    let summary = format!(
        "Hashrate over the last {span_label}: peak {}, now {}",
        format::hashrate(peak),
        format::hashrate(points.last().copied().unwrap_or(0.0))
    );
    if points.len() < 2 || peak <= 0.0 {
        return "<p class=\"chart-empty\">No hashrate recorded yet: the chart fills as shares arrive.</p>".to_owned();
    }
    let step = WIDTH / (points.len() - 1) as f64;
    let mut line = String::with_capacity(points.len() * 14);
    for (i, value) in points.iter().enumerate() {
        let x = i as f64 * step;
        let y = HEIGHT - value / peak * (HEIGHT - 8.0);
        line.push_str(&format!("{x:.1},{y:.1} "));
    }
    let area = format!("0,{HEIGHT} {line}{WIDTH},{HEIGHT}");
    format!(
        concat!(
            "<figure class=\"chart\">",
            "<svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{summary}\" preserveAspectRatio=\"none\">",
            "<title>{summary}</title>",
            "<polygon points=\"{area}\" class=\"area\"/>",
            "<polyline points=\"{line}\" class=\"line\"/>",
            "</svg>",
            "<figcaption><span>{span_label} ago</span><span>peak {peak}</span><span>now</span></figcaption>",
            "</figure>"
        ),
        w = WIDTH,
        h = HEIGHT,
        summary = format::escape(&summary),
        area = area.trim_end(),
        line = line.trim_end(),
        span_label = format::escape(span_label),
        peak = format::hashrate(peak),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_touches_the_top_and_zero_the_bottom() {
        let svg = hashrate_chart(&[0.0, 2e12, 1e12], "24 h");
        assert!(
            svg.contains("points=\"0.0,160.0 300.0,8.0 600.0,84.0\""),
            "{svg}"
        );
        assert!(svg.contains("peak 2.00 TH/s"), "{svg}");
        assert!(svg
            .contains("aria-label=\"Hashrate over the last 24 h: peak 2.00 TH/s, now 1.00 TH/s\""));
    }

    #[test]
    fn no_data_is_said_not_drawn() {
        assert!(hashrate_chart(&[], "24 h").contains("No hashrate recorded yet"));
        assert!(hashrate_chart(&[0.0, 0.0], "24 h").contains("No hashrate recorded yet"));
    }
}
