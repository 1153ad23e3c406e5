//! The `plan` table, one row per node.

use super::*;

/// The first 8 characters of a store path's hash (`66c1gy7w`), for tables.
pub(super) fn short(path: &Option<String>) -> String {
    match path {
        None => "-".into(),
        Some(p) => Path::new(p)
            .file_name()
            .map(|f| f.to_string_lossy().chars().take(8).collect())
            .unwrap_or_else(|| p.clone()),
    }
}

/// The plan as a table (one row per node, then details), for a terminal.
pub fn table(r: &PlanReport) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "OS".into(),
        "STATE".into(),
        "CURRENT".into(),
        "TARGET".into(),
        "WHAT ELSE".into(),
    ]];
    for n in &r.nodes {
        let s = &n.system;
        let mut what = Vec::new();
        if let Some(reason) = &s.reason {
            what.push(reason.clone());
        }
        what.extend(s.installer.iter().cloned());
        what.extend(s.reboot.as_ref().and_then(|r| r.summary()));
        what.extend(n.rendered.iter().cloned());
        let c = &n.committed;
        if c.differs() {
            let mut d = Vec::new();
            for (sign, list) in [("+", &c.ports_added), ("-", &c.ports_removed)] {
                d.extend(list.iter().map(|p| format!("{sign}{p}")));
            }
            for (sign, list) in [("+", &c.tags_added), ("-", &c.tags_removed)] {
                d.extend(list.iter().map(|t| format!("{sign}{t}")));
            }
            what.push(format!("vs {}: {}", c.baseline, d.join(" ")));
        } else if c.baseline != "HEAD" {
            what.push(format!("ports/tags: {}", c.baseline));
        }
        what.extend(n.secrets.iter().cloned());
        match &n.closure {
            Some(Closure::NotBuilt) => what.push("closure: not built".into()),
            Some(Closure::Diff { lines }) => {
                what.push(format!("closure: {} package change(s)", lines.len()))
            }
            Some(Closure::Failed { reason }) => what.push(format!("closure: {reason}")),
            None => {}
        }
        if n.drain {
            what.push("deploy drains its tasks first (agent), undrains after the gate".into());
        }
        rows.push([
            s.name.to_string(),
            s.os.clone(),
            s.state.as_str().to_string(),
            short(&s.current_system),
            short(&s.target_system),
            if what.is_empty() {
                "-".into()
            } else {
                what.join("; ")
            },
        ]);
    }
    let mut w = [0usize; 5];
    for row in &rows {
        for (i, cell) in row.iter().take(5).enumerate() {
            w[i] = w[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        );
    }
    for n in &r.nodes {
        if let Some(Closure::Diff { lines }) = &n.closure {
            let _ = writeln!(out, "\n{} (nix store diff-closures):", n.system.name);
            for l in lines {
                let _ = writeln!(out, "  {l}");
            }
        }
    }
    let orphans: Vec<&String> = r
        .rendered
        .iter()
        .filter(|f| f.ends_with("orphaned"))
        .collect();
    if !r.rendered.is_empty() {
        let _ = writeln!(
            out,
            "\nrendered files out of date ({}): deploy renders them first{}",
            r.rendered.len(),
            if orphans.is_empty() {
                ""
            } else {
                "; orphans are removed"
            }
        );
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let s = &r.summary;
    let _ = writeln!(
        out,
        "\n{} node(s): {} changed, {} unchanged, {} unreachable, {} error",
        r.nodes.len(),
        s.changed,
        s.unchanged,
        s.unreachable,
        s.error
    );
    out
}
