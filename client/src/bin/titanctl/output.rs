//! Table and JSON rendering.

use crate::Format;
use titan_client::Error;

/// A left-aligned text table whose columns fit their widest cell.
#[derive(Debug)]
pub struct Table {
    /// Header cells; fixes the column count.
    header: Vec<String>,
    /// Body rows, each exactly `header.len()` cells.
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into_iter().collect());
    }

    /// Renders the table; cells beyond the header's width are dropped.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().take(cols).enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(self.rows.iter()) {
            let line: Vec<String> = row
                .iter()
                .take(cols)
                .enumerate()
                .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

pub fn print_json(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(err) => eprintln!("titanctl: cannot render JSON: {err}"),
    }
}

pub fn print_error(err: &Error, fmt: Format) {
    match fmt {
        Format::Json => print_json(&serde_json::json!({
            "error": err.to_string(),
            "kind": error_kind(err),
        })),
        Format::Table => eprintln!("titanctl: {err}"),
    }
}

fn error_kind(err: &Error) -> &'static str {
    match err {
        Error::NoEndpoints
        | Error::InvalidEndpoint { .. }
        | Error::TlsFile { .. }
        | Error::TlsConfig(_) => "config",
        Error::OutcomeUnknown { .. } => "outcome_unknown",
        Error::RetriesExhausted { .. } => "unreachable",
        Error::Rejected { .. } => "rejected",
        Error::WatchCanceled { .. } => "watch_canceled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_are_padded_to_the_widest_cell() {
        let mut t = Table::new(["NODE", "ROLE"]);
        t.row(["node1".into(), "LEADER".into()]);
        t.row(["n2".into(), "FOLLOWER".into()]);
        assert_eq!(t.render(), "NODE   ROLE\nnode1  LEADER\nn2     FOLLOWER\n");
    }
}
