//! The dashboard page and the report: one HTML document with its style and
//! script inline (nothing loads from elsewhere), drawn by hand-written SVG.

const STYLE: &str = include_str!("assets/dashboard.css");
const BODY: &str = include_str!("assets/body.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");

/// The live page: drawn at once from `state_json` (a message of
/// `Model::message`), then following `api/events`.
pub(super) fn live(state_json: &str) -> String {
    document("flowrun dashboard", &script_safe(state_json), true)
}

/// The report: the same page with all of the flow run's data inside.
pub(super) fn report(data_json: &str) -> String {
    document("flowrun performance report", &script_safe(data_json), false)
}

fn document(title: &str, data: &str, live: bool) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n{BODY}\
         <script>const DATA = {data};\nconst LIVE = {live};</script>\n<script>\n{SCRIPT}</script>\n</body>\n</html>\n"
    )
}

/// JSON that cannot end the `<script>` element it sits in: `<` only occurs
/// inside JSON strings, where `\u003c` means the same.
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_data_cannot_close_the_script() {
        let html = report(r#"{"run":"</script><script>alert(1)</script>"}"#);
        assert!(!html.contains("</script><script>alert"));
        assert!(html.contains(r#"\u003c/script>"#));
    }

    #[test]
    fn pages_load_nothing_from_elsewhere() {
        for html in [live("{}"), report("{}")] {
            // `url(#hatch)` is a pattern in the page itself.
            for needle in [
                "src=", "href=", "@import", "url(h", "url(/", "https:", "http:",
            ] {
                assert!(!html.contains(needle), "{needle}");
            }
        }
    }
}
