//! Writing Nix safely: string escaping, literals, and a syntax check with `rnix`.

use serde_json::Value;

/// A Nix double-quoted string literal for `s`. Escapes `\`, `"`, `$` (so `${` can
/// never start an interpolation) and control characters.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Nix literal for a JSON value: strings are escaped, lists and attribute sets recurse
/// (attribute names are always quoted), `null` stays `null`.
pub fn literal(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(items) => {
            if items.is_empty() {
                "[ ]".into()
            } else {
                let inner: Vec<String> = items.iter().map(literal).collect();
                format!("[ {} ]", inner.join(" "))
            }
        }
        Value::Object(map) => {
            if map.is_empty() {
                return "{ }".into();
            }
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{} = {};", string(k), literal(v)))
                .collect();
            format!("{{ {} }}", inner.join(" "))
        }
    }
}

/// Parses `text` as Nix with `rnix`; returns the parser's errors, if any.
pub fn check_syntax(text: &str) -> Result<(), Vec<String>> {
    let parsed = rnix::Root::parse(text);
    let errors: Vec<String> = parsed.errors().iter().map(|e| e.to_string()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Text made safe for a one-line comment (Nix `#`, HuJSON `//`): every control character (line
/// breaks included) becomes a space.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_and_quotes_are_escaped() {
        assert_eq!(string("a\"b"), r#""a\"b""#);
        assert_eq!(string("${x}"), r#""\${x}""#);
        assert_eq!(string("back\\slash\n"), r#""back\\slash\n""#);
        assert!(check_syntax(&format!(
            "{{ x = {}; }}",
            string("\"; }; evil = \"${builtins.exec}")
        ))
        .is_ok());
    }

    #[test]
    fn literals_of_structures() {
        let v = serde_json::json!({"a": [1, "x"], "b": null, "c": true});
        assert_eq!(
            literal(&v),
            r#"{ "a" = [ 1 "x" ]; "b" = null; "c" = true; }"#
        );
        assert!(check_syntax(&literal(&v)).is_ok());
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(check_syntax("{ x = ; }").is_err());
    }
}
