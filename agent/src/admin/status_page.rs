//! `/` on the admin port: a small HTML page for a human with a browser.

use std::fmt::Write as _;

use super::AdminState;

pub(super) fn render(state: &AdminState, draining: bool) -> String {
    let pending = state.readiness.pending();
    let mut html = String::with_capacity(2048);
    html.push_str(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Ambit agent</title>\
         <style>body{font-family:sans-serif;margin:2em}td{padding:0 1em 0 0}</style>\
         </head><body>\n<h1>Ambit agent</h1>\n<table>\n",
    );
    let readiness = if draining {
        "draining".to_string()
    } else if pending.is_empty() {
        "ready".to_string()
    } else {
        format!("not ready (waiting for {})", pending.join(", "))
    };
    row(&mut html, "version", env!("CARGO_PKG_VERSION"));
    row(&mut html, "readiness", &readiness);
    if let Some(logs) = &state.logs {
        row(&mut html, "log filter", &logs.current());
    }
    if let Some(metrics) = &state.metrics {
        row(
            &mut html,
            "open connections",
            &metrics.open_connections().to_string(),
        );
    }
    html.push_str("</table>\n");
    if let Some(notices) = &state.notices {
        let lines = (notices.0)();
        if !lines.is_empty() {
            html.push_str("<h2>Notices</h2>\n<ul>\n");
            for line in lines {
                let _ = writeln!(html, "<li>{}</li>", escape(&line));
            }
            html.push_str("</ul>\n");
        }
    }
    html.push_str("<h2>Endpoints</h2>\n<ul>\n");
    html.push_str("<li><a href=\"/config_dump\">/config_dump</a> (");
    let sections: Vec<String> = state.config.names().map(escape).collect();
    html.push_str(&sections.join(", "));
    html.push_str(")</li>\n");
    html.push_str(
        "<li>/logging: GET shows the filter, POST <code>?level=debug</code> changes it</li>\n",
    );
    if state.quit.is_some() {
        html.push_str("<li>/quitquitquit: POST starts a graceful shutdown</li>\n");
    }
    html.push_str("</ul>\n</body></html>\n");
    html
}

fn row(html: &mut String, name: &str, value: &str) {
    let _ = writeln!(
        html,
        "<tr><td>{}</td><td>{}</td></tr>",
        escape(name),
        escape(value)
    );
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
