//! The pages, as HTML strings. Each page carries its data as JSON in a
//! `<script type="application/json">` element (never executed; `<` escaped), which the
//! embedded script (`static/app.js`) renders and then keeps live over SSE. Text that is
//! rendered here is escaped with [`esc`].

use super::views::{FolderView, InstanceDetail, InstanceView};

/// Escape text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// JSON safe inside a `<script>` element (no `</script>`, no `<!--`).
fn script_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn layout(title: &str, page: &str, csrf: &str, has_folder: bool, body: &str) -> String {
    let nav = |href: &str, label: &str, key: &str| {
        format!(
            "<a href=\"{href}\"{}>{label}</a>",
            if key == page { " class=\"here\"" } else { "" }
        )
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"csrf-token\" content=\"{csrf}\">\
<title>{title} · clawfarm</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
<body data-page=\"{page}\"><header><span class=\"brand\">clawfarm</span><nav>{}{}{}<a href=\"/metrics\">Metrics</a></nav>\
<span id=\"live\" class=\"live\" title=\"live updates\">connecting…</span></header>\
<main>{body}</main><div id=\"toast\" role=\"status\"></div>\
<script src=\"/static/app.js\"></script></body></html>\n",
        nav("/", "Instances", "instances"),
        if has_folder {
            nav("/folder", "Folder", "folder")
        } else {
            String::new()
        },
        nav("/images", "Images", "images"),
        title = esc(title),
        csrf = esc(csrf),
    )
}

/// The instances table.
pub fn instances(csrf: &str, rows: &[InstanceView], errors: &[String], has_folder: bool) -> String {
    let body = format!(
        "<h1>Instances</h1>\
<script type=\"application/json\" id=\"data\">{}</script>\
<div id=\"errors\"></div>\
<table id=\"instances\" class=\"grid\"><thead><tr><th>Name</th><th>CLAWID</th><th>Status</th>\
<th>Phase</th><th>Gateway</th><th>Restarts</th><th>Uptime</th><th>CPU</th><th>Memory</th>\
<th>Last error</th><th>Actions</th></tr></thead><tbody></tbody></table>\
<p id=\"empty\" class=\"muted\" hidden>No instances yet: <code>clawfarm apply -f DIR</code> or <code>clawfarm run</code> creates them.</p>",
        script_json(&serde_json::json!({"instances": rows, "errors": errors}))
    );
    layout("Instances", "instances", csrf, has_folder, &body)
}

/// One instance.
pub fn instance(csrf: &str, d: &InstanceDetail, has_folder: bool) -> String {
    let r = &d.instance.row;
    let body = format!(
        "<p class=\"crumbs\"><a href=\"/\">Instances</a> / {name}</p>\
<h1>{name} <span id=\"status\" class=\"status\"></span></h1>\
<script type=\"application/json\" id=\"data\">{data}</script>\
<div id=\"summary\" class=\"kv\"></div>\
<div class=\"actions\" id=\"actions\" data-id=\"{id}\" data-name=\"{name}\"></div>\
<section><h2>Boot timeline</h2><div id=\"timeline\"></div><p id=\"bootsum\" class=\"muted\"></p>\
<h3>Earlier boots</h3><div id=\"boots\"></div></section>\
<section><h2>Serial console <span class=\"muted small\">(follows live)</span></h2>\
<pre id=\"serial\" class=\"console\"></pre></section>\
<section><h2>Bootstrap log</h2><table id=\"bootlines\" class=\"grid\"><thead><tr><th>Time</th><th>Phase</th><th>State</th><th>Exit</th></tr></thead><tbody></tbody></table></section>\
<section><h2>Events</h2><table id=\"events\" class=\"grid\"><thead><tr><th>Time</th><th>Action</th><th>Result</th><th>Message</th></tr></thead><tbody></tbody></table></section>\
<section><h2>Manifest <span class=\"muted small\">{mpath} (param values hidden)</span></h2><pre id=\"manifest\" class=\"code\">{manifest}</pre></section>\
<section><h2>Checkpoints <span class=\"muted small\">(RAM, devices, disk and volumes; restore puts the instance back to that moment, running)</span></h2>\
<table id=\"checkpoints\" class=\"grid\"><thead><tr><th>Tag</th><th>Taken</th><th>VM state</th><th>Volumes</th><th></th></tr></thead><tbody></tbody></table>\
<p id=\"nocheckpoints\" class=\"muted\">No checkpoint yet.</p></section>",
        name = esc(&r.name),
        id = esc(&r.clawid),
        data = script_json(d),
        mpath = esc(&d
            .manifest_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "no manifest (clawfarm run)".into())),
        manifest = esc(d.manifest.as_deref().unwrap_or("")),
    );
    layout(&r.name, "instance", csrf, has_folder, &body)
}

/// The watched folder: the pending plan and the files whose errors keep it from applying.
pub fn folder(csrf: &str, f: Option<&FolderView>) -> String {
    let body = match f {
        None => "<h1>Folder</h1><p class=\"muted\">No folder is watched. Start the dashboard with \
<code>clawfarm watch DIR --ui</code> or <code>clawfarm ui --dir DIR</code>.</p>"
            .to_string(),
        Some(f) => {
            let diags = if f.diagnostics.is_empty() {
                "<p class=\"ok\">No problems: every manifest is valid.</p>".to_string()
            } else {
                let mut s = String::from("<ul id=\"diagnostics\" class=\"diags\">");
                for d in &f.diagnostics {
                    s.push_str(&format!("<li><code>{}</code></li>", esc(d)));
                }
                s.push_str("</ul>");
                s
            };
            let recs = if f.record_errors.is_empty() {
                String::new()
            } else {
                let mut s = String::from("<h2>Unreadable records</h2><ul class=\"diags\">");
                for d in &f.record_errors {
                    s.push_str(&format!("<li><code>{}</code></li>", esc(d)));
                }
                s.push_str("</ul>");
                s
            };
            format!(
                "<h1>Folder <code>{}</code></h1><h2>Pending plan <span class=\"muted small\">(what the next reconcile will do)</span></h2>\
<pre id=\"plan\" class=\"code\">{}</pre><h2>Problems <span class=\"muted small\">(these files are left alone until fixed)</span></h2>{diags}{recs}",
                esc(&f.dir.display().to_string()),
                esc(&f.text),
            )
        }
    };
    layout("Folder", "folder", csrf, f.is_some(), &body)
}

/// Stored images.
pub fn images(csrf: &str, items: &[serde_json::Value], has_folder: bool) -> String {
    let mut rows = String::new();
    for it in items {
        let s = |k: &str| it[k].as_str().unwrap_or("").to_string();
        let used: Vec<String> = it["used_by"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .map(|c| format!("<a href=\"/i/{0}\">{0}</a>", esc(c)))
                    .collect()
            })
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td>{}</td><td><code title=\"{d}\">{}</code></td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&s("kind")),
            esc(crate::util::text::short(&s("digest"))),
            esc(it["name"].as_str().unwrap_or("-")),
            esc(&crate::util::text::human_bytes(it["size"].as_u64().unwrap_or(0))),
            if used.is_empty() { "-".into() } else { used.join(", ") },
            d = esc(&s("digest")),
        ));
    }
    let body = format!(
        "<h1>Images</h1><table id=\"images\" class=\"grid\"><thead><tr><th>Kind</th><th>Digest</th><th>Name</th><th>Size</th><th>Used by</th></tr></thead><tbody>{rows}</tbody></table>{}",
        if items.is_empty() {
            "<p class=\"muted\">The store is empty.</p>"
        } else {
            ""
        }
    );
    layout("Images", "images", csrf, has_folder, &body)
}

/// A page that is not there.
pub fn not_found(msg: &str, has_folder: bool) -> String {
    layout(
        "Not found",
        "none",
        "",
        has_folder,
        &format!(
            "<h1>Not found</h1><p>{}</p><p><a href=\"/\">Instances</a></p>",
            esc(msg)
        ),
    )
}

/// The answer without a token (no navigation, no data).
pub fn unauthorized() -> String {
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>clawfarm: token needed</title></head>\
<body><h1>401: a token is needed</h1><p>Open the address that <code>clawfarm ui</code> printed \
(it carries <code>?token=…</code>); the token is also in <code>ui.token</code> in the clawfarm home.</p></body></html>\n"
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let j = script_json(&serde_json::json!({"x": "</script><script>alert(1)</script>"}));
        assert!(!j.contains("</script>"));
        assert!(!j.contains('<'));
    }
}
