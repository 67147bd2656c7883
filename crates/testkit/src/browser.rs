//! Pages in a real headless browser: Debian's `chromium` (installed by
//! scripts/setup.sh), its DOM after load, its console lines, a phone-sized
//! screenshot.

use std::path::Path;
use std::process::Command;

/// A page as Chromium rendered it.
pub struct Rendered {
    pub dom: String,
    /// The console lines Chromium logged (`:CONSOLE`).
    pub console: Vec<String>,
}

/// Loads `url` in headless Chromium; returns the DOM after load and every
/// console line Chromium logged; with `screenshot`, also a 390×844 (phone)
/// PNG of the page.
pub async fn chromium(url: &str, screenshot: Option<&Path>) -> Rendered {
    let url = url.to_owned();
    let screenshot = screenshot.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let command = || {
            let mut command = Command::new("chromium");
            command.args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=390,844",
            ]);
            command.arg(format!("--user-data-dir={}", profile.path().display()));
            command
        };
        let dom = command()
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .expect("chromium is installed by scripts/setup.sh (Debian package chromium)");
        assert!(dom.status.success(), "chromium --dump-dom {url}: {dom:?}");
        if let Some(path) = &screenshot {
            let shot = command()
                .arg(format!("--screenshot={}", path.display()))
                .arg(&url)
                .output()
                .unwrap();
            assert!(shot.status.success(), "chromium --screenshot: {shot:?}");
            let png = std::fs::read(path).expect("a screenshot");
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 5_000,
                "a real picture"
            );
        }
        let stderr = String::from_utf8_lossy(&dom.stderr);
        Rendered {
            dom: String::from_utf8(dom.stdout).unwrap(),
            console: stderr
                .lines()
                .filter(|l| l.contains(":CONSOLE"))
                .map(str::to_owned)
                .collect(),
        }
    })
    .await
    .unwrap()
}

/// The text of the element with `id` (our pages keep figures in leaf
/// elements).
pub fn text_of(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("#{id} in the page"))
        + marker.len();
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].to_owned()
}
