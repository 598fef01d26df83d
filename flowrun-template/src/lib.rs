//! The grammar of flowrun's text templates, in one place for the runtime
//! (`flowrun-core`, which renders `result_storage_key` templates) and the
//! macros (`flowrun-macros`, which check them, and run-name templates, at
//! compile time).
//!
//! A template is text with `{placeholder}`s; `{{` and `}}` are literal
//! braces.
//!
//! ```
//! use flowrun_template::{key_pieces, KeyPiece, KeyVar};
//! let pieces = key_pieces("{flow.name}-{parameters[day]}.json").unwrap();
//! assert_eq!(
//!     pieces,
//!     [
//!         KeyPiece::Var(KeyVar::FlowName),
//!         KeyPiece::Text("-".into()),
//!         KeyPiece::Parameter("day".into()),
//!         KeyPiece::Text(".json".into()),
//!     ]
//! );
//! assert!(key_pieces("{task_run.nme}").unwrap_err().contains("task_run.nme"));
//! ```

#![forbid(unsafe_code)]

/// A piece of a template: literal text or what a `{...}` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text as it is rendered (`{{` already read as `{`).
    Text(String),
    /// The inside of a `{...}`, trimmed.
    Placeholder(String),
}

/// Splits `template` into text and placeholders, or says why its braces
/// do not balance.
///
/// ```
/// use flowrun_template::{segments, Segment};
/// assert_eq!(
///     segments("a{{b}} { x }").unwrap(),
///     [Segment::Text("a{b} ".into()), Segment::Placeholder("x".into())]
/// );
/// assert!(segments("a{b").is_err());
/// assert!(segments("a}b").is_err());
/// ```
pub fn segments(template: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => return Err("a `{` is not closed (write `{{` for a brace)".into()),
                    }
                }
                if !text.is_empty() {
                    out.push(Segment::Text(std::mem::take(&mut text)));
                }
                out.push(Segment::Placeholder(inner.trim().to_owned()));
            }
            '}' => return Err("a `}` is not opened (write `}}` for a brace)".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push(Segment::Text(text));
    }
    Ok(out)
}

/// The placeholders of `template`, in order, or why its braces do not
/// balance.
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    Ok(segments(template)?
        .into_iter()
        .filter_map(|s| match s {
            Segment::Placeholder(p) => Some(p),
            Segment::Text(_) => None,
        })
        .collect())
}

/// The placeholders a `result_storage_key` template may use
/// (`parameters[NAME]` with the name of one of the task's parameters).
pub const KEY_PLACEHOLDERS: &[&str] = &[
    "task_run.name",
    "task.name",
    "task_run.task_name",
    "flow_run.id",
    "flow_run.name",
    "flow.name",
    "flow_run.flow_name",
    "cache_key",
    "parameters[NAME]",
];

/// What a named placeholder of a `result_storage_key` stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVar {
    /// `{task_run.name}`.
    TaskRunName,
    /// `{task.name}` or Prefect's `{task_run.task_name}`.
    TaskName,
    /// `{flow_run.id}`.
    FlowRunId,
    /// `{flow_run.name}`.
    FlowRunName,
    /// `{flow.name}` or Prefect's `{flow_run.flow_name}`.
    FlowName,
    /// `{cache_key}`.
    CacheKey,
}

/// A piece of a parsed `result_storage_key` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPiece {
    /// Literal text.
    Text(String),
    /// A named placeholder.
    Var(KeyVar),
    /// `{parameters[name]}`: the text of the run's argument `name`.
    Parameter(Box<str>),
}

/// Parses a `result_storage_key` template; an unbalanced brace, an
/// unknown placeholder or a `parameters[...]` that is not a name is an
/// error naming it.
pub fn key_pieces(template: &str) -> Result<Vec<KeyPiece>, String> {
    segments(template)?
        .into_iter()
        .map(|segment| match segment {
            Segment::Text(t) => Ok(KeyPiece::Text(t)),
            Segment::Placeholder(p) => key_piece(&p),
        })
        .collect()
}

fn key_piece(placeholder: &str) -> Result<KeyPiece, String> {
    if let Some(name) = parameter_of(placeholder) {
        let ident = name
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_alphanumeric() || c == '_');
        return if ident {
            Ok(KeyPiece::Parameter(name.into()))
        } else {
            Err(format!(
                "{{{placeholder}}} must name a parameter, as in {{parameters[x]}}"
            ))
        };
    }
    let var = match placeholder {
        "task_run.name" => KeyVar::TaskRunName,
        "task.name" | "task_run.task_name" => KeyVar::TaskName,
        "flow_run.id" => KeyVar::FlowRunId,
        "flow_run.name" => KeyVar::FlowRunName,
        "flow.name" | "flow_run.flow_name" => KeyVar::FlowName,
        "cache_key" => KeyVar::CacheKey,
        other => {
            let expected: Vec<String> = KEY_PLACEHOLDERS
                .iter()
                .map(|p| format!("{{{p}}}"))
                .collect();
            return Err(format!(
                "unknown placeholder {{{other}}}; expected one of: {}",
                expected.join(", ")
            ));
        }
    };
    Ok(KeyPiece::Var(var))
}

/// The parameter name of a `parameters[NAME]` placeholder (Prefect's
/// spelling), trimmed, when `placeholder` is one.
fn parameter_of(placeholder: &str) -> Option<&str> {
    Some(
        placeholder
            .strip_prefix("parameters[")?
            .strip_suffix(']')?
            .trim(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_placeholder_parses() {
        for p in KEY_PLACEHOLDERS {
            let p = p.replace("NAME", "x");
            assert!(key_pieces(&format!("{{{p}}}")).is_ok(), "{p}");
        }
    }

    #[test]
    fn parameters_must_be_names() {
        assert_eq!(
            key_pieces("{parameters[ day ]}").unwrap(),
            [KeyPiece::Parameter("day".into())]
        );
        for bad in ["{parameters[]}", "{parameters[1x]}", "{parameters[a-b]}"] {
            let e = key_pieces(bad).unwrap_err();
            assert!(e.contains("must name a parameter"), "{bad}: {e}");
        }
    }

    #[test]
    fn braces_must_balance() {
        assert!(key_pieces("{flow.name").unwrap_err().contains("not closed"));
        assert!(key_pieces("flow}").unwrap_err().contains("not opened"));
        assert_eq!(key_pieces("{{x}}").unwrap(), [KeyPiece::Text("{x}".into())]);
    }

    #[test]
    fn unknown_placeholders_are_named_with_the_valid_ones() {
        let e = key_pieces("{task_run.nmae}").unwrap_err();
        assert!(e.contains("{task_run.nmae}"), "{e}");
        assert!(e.contains("{parameters[NAME]}"), "{e}");
    }
}
