//! How results reach people and programs: every command returns a [`Report`], printed as text
//! (tables via comfy-table, so long names widen their column instead of breaking it) or, under
//! `--json`, as one JSON value.

use crate::error::CliError;
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use serde::Serialize;

/// What a command prints.
pub trait Report {
    /// The JSON form (`--json`).
    fn json(&self) -> serde_json::Value;
    /// The text form, without a trailing newline; empty for nothing.
    fn human(&self) -> String;
    /// A failure to report after the output (e.g. damaged volumes in a list).
    fn failure(&self) -> Option<CliError> {
        None
    }
}

/// A result whose JSON form is its serialisation and whose text form is [`Human::human`].
pub trait Human: Serialize {
    fn human(&self) -> String;
}

impl<T: Human> Report for T {
    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
    fn human(&self) -> String {
        Human::human(self)
    }
}

/// A column: its header and whether numbers right-align in it.
pub struct Col(pub &'static str, pub bool);

/// A borderless table, as `virsh` and `rbd ls -l` print them: a header line, then one line per
/// row, columns as wide as their widest cell (never wrapped or cut, whatever the terminal).
pub fn table(cols: &[Col], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(cols.iter().map(|c| c.0));
    for r in rows {
        t.add_row(r);
    }
    for (i, c) in cols.iter().enumerate() {
        if let Some(col) = t.column_mut(i) {
            col.set_padding((0, 2));
            if c.1 {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
    // Trailing padding of the last column is noise.
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines of `key: value`, keys padded to one width.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:<w$} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bytes in binary units with one decimal: `512 B`, `64.0 KiB`, `20.0 GiB`.
pub fn human_size(n: u64) -> String {
    const U: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `(none)` for an empty string.
pub fn or_none(s: &str) -> String {
    if s.is_empty() {
        "(none)".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_widen_their_column() {
        let long = "v".repeat(128);
        let t = table(
            &[Col("VOLUME", false), Col("SIZE", true)],
            [
                vec![format!("default/{long}"), "1.0 GiB".into()],
                vec!["default/a".into(), "64.0 MiB".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        // Every row on one line, the sizes right-aligned in one column.
        let ends: Vec<usize> = lines.iter().map(|l| l.len()).collect();
        assert!(ends.iter().all(|&e| e == ends[0]), "{t}");
        assert!(lines[1].contains(&long));
        assert_eq!(human_size(65536), "64.0 KiB");
        assert_eq!(human_size(512), "512 B");
    }
}
