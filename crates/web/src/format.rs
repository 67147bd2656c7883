//! How numbers read on the pages: hashrates and difficulties with SI
//! prefixes (as miners' own screens show them), ages, and HTML escaping.

/// `1.23 TH/s`.
pub fn hashrate(hashes_per_second: f64) -> String {
    format!("{}H/s", si(hashes_per_second))
}

/// `4.2 G`: a difficulty as Bitaxe and ckpool show one.
pub fn difficulty(value: f64) -> String {
    si(value).trim_end().to_owned()
}

fn si(value: f64) -> String {
    const PREFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    if !value.is_finite() || value <= 0.0 {
        return "0 ".to_owned();
    }
    // Regtest and test difficulties are tiny: keep their digits.
    if value < 0.01 {
        return format!("{value:.2e} ");
    }
    let mut scaled = value;
    let mut prefix = 0;
    while scaled >= 1000.0 && prefix + 1 < PREFIXES.len() {
        scaled /= 1000.0;
        prefix += 1;
    }
    let digits = if scaled >= 100.0 || prefix == 0 && scaled.fract() == 0.0 {
        0
    } else if scaled >= 10.0 {
        1
    } else {
        2
    };
    format!("{scaled:.digits$} {}", PREFIXES[prefix])
}

/// `42 s ago`, `3 min ago`, `5 h ago`, `2 d ago`.
pub fn ago(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3_599 => format!("{} min ago", s / 60),
        3_600..=86_399 => format!("{} h ago", s / 3_600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A share of rejected shares, `0.5 %`.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "–".to_owned();
    }
    format!("{:.1} %", part as f64 * 100.0 / whole as f64)
}

/// Text made safe inside HTML elements and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_on_a_miners_screen() {
        assert_eq!(hashrate(0.0), "0 H/s");
        assert_eq!(hashrate(1_230_000_000_000.0), "1.23 TH/s");
        assert_eq!(hashrate(512_000_000_000.0), "512 GH/s");
        assert_eq!(difficulty(4_200_000_000.0), "4.20 G");
        assert_eq!(difficulty(1.0), "1");
        assert_eq!(difficulty(4.656e-10), "4.66e-10");
        assert_eq!(difficulty(0.5), "0.50");
        assert_eq!(ago(42.0), "42 s ago");
        assert_eq!(ago(7_300.0), "2 h ago");
        assert_eq!(percent(1, 200), "0.5 %");
        assert_eq!(percent(0, 0), "–");
    }

    #[test]
    fn markup_in_names_is_text() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
