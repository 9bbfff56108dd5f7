//! Views as SQL tables: a projection may keep, besides its JSON documents, real tables with
//! typed columns and indexes that any SQL tool can read. The core describes them
//! ([`TableSpec`]), says what changes in them ([`RowChange`]) and how to ask for rows
//! ([`TableQuery`]); each view manager turns that into its own SQL (or, in memory, maps).
//!
//! A view instance states the rows it contributes ([`crate::View::rows`]); the runner compares
//! the rows of the instance before and after a batch and commits the difference in the same
//! transaction as the checkpoint, so tables are exactly-once like documents. Two kinds:
//! - [`TableKind::Rows`]: each row belongs to one instance (an order's line in a list); a
//!   changed instance replaces its rows.
//! - [`TableKind::Sums`]: rows add up contributions of many instances (sales per day and
//!   sku); a changed instance adds the difference of its contribution, and a row whose sums
//!   all reach zero is removed.
//!
//! This module knows no SQL and no storage.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// A 64-bit signed integer.
    Integer,
    /// UTF-8 text without NUL characters (PostgreSQL cannot store them).
    Text,
    /// A calendar day (`date` in PostgreSQL, `YYYY-MM-DD` text in SQLite).
    Date,
    /// An instant, kept to the microsecond (`timestamptz` in PostgreSQL, RFC 3339 text with
    /// six fractional digits in SQLite, so that text order is time order).
    Timestamp,
}

/// One column of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Its name: lowercase ASCII letters, digits and `_`.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
    /// Whether it may hold [`Value::Null`].
    pub nullable: bool,
}

impl Column {
    /// A column that must hold a value.
    pub const fn new(name: &'static str, ty: ColumnType) -> Self {
        Self { name, ty, nullable: false }
    }

    /// A column that may be null.
    pub const fn nullable(name: &'static str, ty: ColumnType) -> Self {
        Self { name, ty, nullable: true }
    }
}

/// How instances share a table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Each row belongs to one instance; a changed instance replaces its rows.
    Rows,
    /// Rows are sums of contributions; every column after the key is an integer sum.
    Sums,
}

/// A table a projection keeps. Names are plain identifiers; the rebuild of a projection
/// writes into `<name>__rebuild` and swaps it in.
#[derive(Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// The table's name, unique in the view store.
    pub name: &'static str,
    /// Its columns, the primary key first.
    pub columns: &'static [Column],
    /// How many leading columns form the primary key (at least one).
    pub key_columns: usize,
    /// Secondary indexes, each a list of column names.
    pub indexes: &'static [&'static [&'static str]],
    /// How instances share rows.
    pub kind: TableKind,
}

impl TableSpec {
    /// The index of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|column| column.name == name)
    }

    /// The primary key columns.
    pub fn key(&self) -> &'static [Column] {
        &self.columns[..self.key_columns]
    }

    /// Checks the spec itself: names, key, indexes and sum columns. A spec is static data
    /// written by a developer, so view managers check it once when they prepare a table.
    pub fn check(&self) -> Result<(), String> {
        let plain = |name: &str| {
            !name.is_empty()
                && name.len() <= 48
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit()
        };
        if !plain(self.name) || self.name.contains("__") {
            return Err(format!("table name {:?} is not a plain identifier", self.name));
        }
        if self.key_columns == 0 || self.key_columns > self.columns.len() {
            return Err(format!(
                "table {} needs 1 to {} key columns",
                self.name,
                self.columns.len()
            ));
        }
        for (i, column) in self.columns.iter().enumerate() {
            if !plain(column.name) {
                return Err(format!(
                    "column {:?} of {} is not a plain identifier",
                    column.name, self.name
                ));
            }
            if self.columns[..i].iter().any(|c| c.name == column.name) {
                return Err(format!("column {} of {} appears twice", column.name, self.name));
            }
            if i < self.key_columns && column.nullable {
                return Err(format!(
                    "key column {} of {} cannot be nullable",
                    column.name, self.name
                ));
            }
            if self.kind == TableKind::Sums
                && i >= self.key_columns
                && (column.ty != ColumnType::Integer || column.nullable)
            {
                return Err(format!(
                    "sum column {} of {} must be a non-null integer",
                    column.name, self.name
                ));
            }
        }
        for index in self.indexes {
            if index.is_empty() || index.iter().any(|name| self.column(name).is_none()) {
                return Err(format!("an index of {} names an unknown column", self.name));
            }
        }
        Ok(())
    }
}

/// A value of one column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// No value (nullable columns only).
    Null,
    /// An integer.
    Integer(i64),
    /// Text.
    Text(String),
    /// A day.
    Date(NaiveDate),
    /// An instant, to the microsecond.
    Timestamp(DateTime<Utc>),
}

impl Value {
    /// A timestamp value, truncated to the microsecond every backend keeps.
    pub fn timestamp(at: DateTime<Utc>) -> Self {
        Value::Timestamp(at.trunc_subsecs(6))
    }

    /// Whether this value fits a column of `column`'s type.
    pub fn fits(&self, column: &Column) -> bool {
        match self {
            Value::Null => column.nullable,
            Value::Integer(_) => column.ty == ColumnType::Integer,
            Value::Text(text) => column.ty == ColumnType::Text && !text.contains('\0'),
            Value::Date(_) => column.ty == ColumnType::Date,
            Value::Timestamp(at) => {
                column.ty == ColumnType::Timestamp && at.timestamp_subsec_nanos() % 1000 == 0
            }
        }
    }

    /// The integer, if this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    /// Orders two values of one column as SQL does: null first, then by value.
    pub fn compare(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Less,
            (_, Value::Null) => Ordering::Greater,
            (Value::Integer(a), Value::Integer(b)) => a.cmp(b),
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Date(a), Value::Date(b)) => a.cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            // Columns hold one type; a mixed comparison is a caller's bug, ordered stably.
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Integer(_) => 1,
            Value::Text(_) => 2,
            Value::Date(_) => 3,
            Value::Timestamp(_) => 4,
        }
    }
}

/// The rows one view instance contributes, by table, as [`crate::View::rows`] states them.
#[derive(Debug, Default)]
pub struct TableRows {
    rows: Vec<(&'static str, Vec<Value>)>,
}

impl TableRows {
    /// Contributes `values` (in column order) to table `table`.
    pub fn push(&mut self, table: &'static str, values: Vec<Value>) {
        self.rows.push((table, values));
    }

    /// The rows stated so far.
    pub fn into_rows(self) -> Vec<(&'static str, Vec<Value>)> {
        self.rows
    }
}

/// One change to a table, committed with a projection's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowChange {
    /// Insert the row, or replace the row with its key ([`TableKind::Rows`]).
    Upsert {
        /// The table.
        table: &'static TableSpec,
        /// Every column, in order.
        row: Vec<Value>,
    },
    /// Delete the row with this key ([`TableKind::Rows`]).
    Delete {
        /// The table.
        table: &'static TableSpec,
        /// The key columns, in order.
        key: Vec<Value>,
    },
    /// Add the sums to the row with this key, creating it when missing and deleting it
    /// when every sum becomes zero ([`TableKind::Sums`]).
    Add {
        /// The table.
        table: &'static TableSpec,
        /// The key columns, then one difference per sum column.
        row: Vec<Value>,
    },
}

impl RowChange {
    /// The table changed.
    pub fn table(&self) -> &'static TableSpec {
        match self {
            RowChange::Upsert { table, .. }
            | RowChange::Delete { table, .. }
            | RowChange::Add { table, .. } => table,
        }
    }
}

/// Checks the rows an instance states against the projection's tables: every row names a
/// declared table and fits its columns. Returns why not, for parking the instance.
pub fn check_rows(
    tables: &[&'static TableSpec],
    rows: &[(&'static str, Vec<Value>)],
) -> Result<(), String> {
    for (table, values) in rows {
        let Some(spec) = tables.iter().find(|spec| spec.name == *table) else {
            return Err(format!("a row for table {table}, which the projection does not declare"));
        };
        if values.len() != spec.columns.len() {
            return Err(format!(
                "a row for {table} with {} values; the table has {} columns",
                values.len(),
                spec.columns.len()
            ));
        }
        if let Some((value, column)) =
            values.iter().zip(spec.columns).find(|(value, column)| !value.fits(column))
        {
            return Err(format!("value {value:?} does not fit column {table}.{}", column.name));
        }
    }
    // Two rows of one instance with the same key would overwrite each other, and in one
    // SQL statement cannot be written at all.
    for (i, (table, values)) in rows.iter().enumerate() {
        let Some(spec) = tables.iter().find(|spec| spec.name == *table) else { continue };
        if spec.kind != TableKind::Rows {
            continue;
        }
        let k = spec.key_columns;
        if rows[..i].iter().any(|(other, earlier)| other == table && earlier[..k] == values[..k]) {
            return Err(format!("two rows for {table} with the key {:?}", &values[..k]));
        }
    }
    Ok(())
}

/// The changes that turn an instance's `old` rows into its `new` rows.
pub fn diff_rows(
    tables: &[&'static TableSpec],
    old: Vec<(&'static str, Vec<Value>)>,
    new: Vec<(&'static str, Vec<Value>)>,
    changes: &mut Vec<RowChange>,
) {
    for spec in tables {
        let of_table = |rows: &[(&'static str, Vec<Value>)]| -> Vec<Vec<Value>> {
            rows.iter()
                .filter(|(table, _)| *table == spec.name)
                .map(|(_, row)| row.clone())
                .collect()
        };
        let (old, new) = (of_table(&old), of_table(&new));
        let k = spec.key_columns;
        match spec.kind {
            TableKind::Rows => {
                for row in &new {
                    if !old.contains(row) {
                        changes.push(RowChange::Upsert { table: spec, row: row.clone() });
                    }
                }
                for row in &old {
                    if !new.iter().any(|n| n[..k] == row[..k]) {
                        changes.push(RowChange::Delete { table: spec, key: row[..k].to_vec() });
                    }
                }
            }
            TableKind::Sums => {
                let mut sums: Vec<(Vec<Value>, Vec<i64>)> = Vec::new();
                let mut add = |row: &[Value], sign: i64| {
                    let deltas =
                        row[k..].iter().map(|v| v.as_integer().unwrap_or(0).saturating_mul(sign));
                    match sums.iter_mut().find(|(key, _)| key[..] == row[..k]) {
                        Some((_, totals)) => {
                            for (total, delta) in totals.iter_mut().zip(deltas) {
                                *total = total.saturating_add(delta);
                            }
                        }
                        None => sums.push((row[..k].to_vec(), deltas.collect())),
                    }
                };
                for row in &old {
                    add(row, -1);
                }
                for row in &new {
                    add(row, 1);
                }
                for (mut key, deltas) in sums {
                    if deltas.iter().any(|delta| *delta != 0) {
                        key.extend(deltas.into_iter().map(Value::Integer));
                        changes.push(RowChange::Add { table: spec, row: key });
                    }
                }
            }
        }
    }
}

/// A comparison in a [`TableQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `=`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Comparison {
    /// The SQL operator.
    pub fn sql(self) -> &'static str {
        match self {
            Comparison::Eq => "=",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        }
    }

    /// Whether `ordering` (a value compared to the operand) satisfies this comparison.
    pub fn holds(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Eq => ordering == Ordering::Equal,
            Comparison::Lt => ordering == Ordering::Less,
            Comparison::Le => ordering != Ordering::Greater,
            Comparison::Gt => ordering == Ordering::Greater,
            Comparison::Ge => ordering != Ordering::Less,
        }
    }
}

/// A condition on one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The column.
    pub column: &'static str,
    /// How it compares.
    pub comparison: Comparison,
    /// To what.
    pub value: Value,
}

/// Rows of one table: filtered, ordered, and paged by key (never by offset), so that a page
/// boundary stays put while rows are inserted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableQuery {
    /// Every filter must hold.
    pub filters: Vec<Filter>,
    /// The columns to order by; together they must identify a row, so that paging by them
    /// neither repeats nor skips one.
    pub order_by: Vec<&'static str>,
    /// Newest (largest) first when true.
    pub descending: bool,
    /// Only rows strictly after this tuple of `order_by` values, in the query's order.
    pub after: Option<Vec<Value>>,
    /// At most this many rows.
    pub limit: Option<usize>,
}

impl TableQuery {
    /// Checks the query against the table: known columns, values that fit them, and an
    /// `after` tuple as long as `order_by`.
    pub fn check(&self, spec: &TableSpec) -> Result<(), String> {
        for filter in &self.filters {
            let Some(i) = spec.column(filter.column) else {
                return Err(format!("{} has no column {}", spec.name, filter.column));
            };
            if !filter.value.fits(&spec.columns[i]) || filter.value == Value::Null {
                return Err(format!(
                    "{:?} does not fit {}.{}",
                    filter.value, spec.name, filter.column
                ));
            }
        }
        if let Some(name) = self.order_by.iter().find(|name| spec.column(name).is_none()) {
            return Err(format!("{} has no column {name}", spec.name));
        }
        // Paging compares tuples of the ordering columns, which a null makes unknown (and
        // SQL stores sort nulls differently), so only non-null columns order a query.
        if let Some(name) = self
            .order_by
            .iter()
            .find(|name| spec.column(name).is_some_and(|i| spec.columns[i].nullable))
        {
            return Err(format!("{}.{name} may be null and cannot order a query", spec.name));
        }
        if let Some(after) = &self.after {
            for (name, value) in self.order_by.iter().zip(after) {
                let fits = spec
                    .column(name)
                    .is_some_and(|i| value.fits(&spec.columns[i]) && *value != Value::Null);
                if !fits {
                    return Err(format!(
                        "the paging value {value:?} does not fit {}.{name}",
                        spec.name
                    ));
                }
            }
        }
        if let Some(after) = &self.after
            && after.len() != self.order_by.len()
        {
            return Err("the paging tuple must have one value per ordering column".to_owned());
        }
        Ok(())
    }

    /// Whether `row` of `spec` passes the filters and the paging tuple. For stores that
    /// evaluate queries themselves (the in-memory one); SQL stores translate instead.
    pub fn matches(&self, spec: &TableSpec, row: &[Value]) -> bool {
        let value = |name: &str| spec.column(name).map(|i| &row[i]);
        let filtered = self.filters.iter().all(|filter| {
            value(filter.column).is_some_and(|v| {
                *v != Value::Null && filter.comparison.holds(v.compare(&filter.value))
            })
        });
        let after = self.after.as_ref().is_none_or(|after| {
            let ordering = self.compare_order(spec, row, after);
            if self.descending { ordering == Ordering::Less } else { ordering == Ordering::Greater }
        });
        filtered && after
    }

    /// The rows among `rows` this query answers, in its order and within its limit. For
    /// stores that evaluate queries themselves (in memory, Redis); SQL stores translate.
    pub fn run(
        &self,
        spec: &TableSpec,
        rows: impl IntoIterator<Item = Vec<Value>>,
    ) -> Vec<Vec<Value>> {
        let mut found: Vec<Vec<Value>> =
            rows.into_iter().filter(|row| self.matches(spec, row)).collect();
        let tuple = |row: &[Value]| -> Vec<Value> {
            self.order_by
                .iter()
                .filter_map(|name| spec.column(name).map(|i| row[i].clone()))
                .collect()
        };
        found.sort_by(|a, b| {
            let ordering = self.compare_order(spec, a, &tuple(b));
            if self.descending { ordering.reverse() } else { ordering }
        });
        if let Some(limit) = self.limit {
            found.truncate(limit);
        }
        found
    }

    /// Compares `row`'s ordering columns to `tuple`, column by column.
    pub fn compare_order(&self, spec: &TableSpec, row: &[Value], tuple: &[Value]) -> Ordering {
        for (name, other) in self.order_by.iter().zip(tuple) {
            let Some(i) = spec.column(name) else { continue };
            match row[i].compare(other) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        Ordering::Equal
    }
}

/// The portable SQL that makes table `name` to `spec` if it is missing, with its indexes
/// (named `<name>_idx<i>`): `sql_type` names a column type in the backend's dialect, and
/// `options` follows the column list (SQLite's `STRICT, WITHOUT ROWID`).
pub fn create_sql(
    spec: &TableSpec,
    name: &str,
    sql_type: fn(ColumnType) -> &'static str,
    options: &str,
) -> String {
    let columns: Vec<String> = spec
        .columns
        .iter()
        .map(|c| {
            format!("{} {}{}", c.name, sql_type(c.ty), if c.nullable { "" } else { " NOT NULL" })
        })
        .collect();
    let key: Vec<&str> = spec.key().iter().map(|c| c.name).collect();
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {name} ({}, PRIMARY KEY ({})){options};\n",
        columns.join(", "),
        key.join(", ")
    );
    for (i, index) in spec.indexes.iter().enumerate() {
        sql.push_str(&format!(
            "CREATE INDEX IF NOT EXISTS {name}_idx{i} ON {name} ({});\n",
            index.join(", ")
        ));
    }
    sql
}

/// The portable SQL text of `query` on `spec` (standard SQL: row-value comparison for the
/// paging tuple, `LIMIT`) and the values to bind, in order; `placeholder(n)` writes the
/// backend's marker for the n-th value (`?1`, `$1`). SQL stores run it; names come from a
/// checked spec, and every value is bound, never written into the text.
pub fn select_sql<'q>(
    spec: &TableSpec,
    query: &'q TableQuery,
    placeholder: fn(usize) -> String,
) -> (String, Vec<&'q Value>) {
    let mut conditions = Vec::new();
    let mut values: Vec<&Value> = Vec::new();
    for filter in &query.filters {
        values.push(&filter.value);
        conditions.push(format!(
            "{} {} {}",
            filter.column,
            filter.comparison.sql(),
            placeholder(values.len())
        ));
    }
    if let Some(after) = &query.after {
        let slots: Vec<String> = after
            .iter()
            .map(|value| {
                values.push(value);
                placeholder(values.len())
            })
            .collect();
        let direction = if query.descending { "<" } else { ">" };
        conditions.push(format!(
            "({}) {direction} ({})",
            query.order_by.join(", "),
            slots.join(", ")
        ));
    }
    let columns: Vec<&str> = spec.columns.iter().map(|c| c.name).collect();
    let mut sql = format!("SELECT {} FROM {}", columns.join(", "), spec.name);
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    if !query.order_by.is_empty() {
        let direction = if query.descending { " DESC" } else { "" };
        let order: Vec<String> = query.order_by.iter().map(|c| format!("{c}{direction}")).collect();
        sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    }
    (sql, values)
}

/// Applies `change` to an in-memory table (a map from key to row). For the in-memory view
/// manager and for tests; SQL stores run the equivalent statements.
pub fn apply_change(rows: &mut HashMap<Vec<Value>, Vec<Value>>, change: &RowChange) {
    let k = change.table().key_columns;
    match change {
        RowChange::Upsert { row, .. } => {
            rows.insert(row[..k].to_vec(), row.clone());
        }
        RowChange::Delete { key, .. } => {
            rows.remove(key);
        }
        RowChange::Add { row, .. } => {
            let key = row[..k].to_vec();
            let entry = rows.entry(key).or_insert_with(|| {
                let mut zero = row[..k].to_vec();
                zero.extend(row[k..].iter().map(|_| Value::Integer(0)));
                zero
            });
            for (total, delta) in entry[k..].iter_mut().zip(&row[k..]) {
                let sum =
                    total.as_integer().unwrap_or(0).saturating_add(delta.as_integer().unwrap_or(0));
                *total = Value::Integer(sum);
            }
            if entry[k..].iter().all(|v| *v == Value::Integer(0)) {
                rows.remove(&row[..k]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SALES: TableSpec = TableSpec {
        name: "sales",
        columns: &[
            Column::new("day", ColumnType::Date),
            Column::new("sku", ColumnType::Text),
            Column::new("units", ColumnType::Integer),
        ],
        key_columns: 2,
        indexes: &[],
        kind: TableKind::Sums,
    };

    fn sale(day: u32, sku: &str, units: i64) -> (&'static str, Vec<Value>) {
        let day = NaiveDate::from_ymd_opt(2026, 11, day).expect("a day");
        ("sales", vec![Value::Date(day), Value::Text(sku.into()), Value::Integer(units)])
    }

    #[test]
    fn sums_add_differences_and_drop_rows_that_reach_zero() {
        let mut table = HashMap::new();
        let mut changes = Vec::new();
        diff_rows(&[&SALES], vec![], vec![sale(1, "tea", 2), sale(1, "cake", 1)], &mut changes);
        diff_rows(&[&SALES], vec![], vec![sale(1, "tea", 3)], &mut changes);
        for change in &changes {
            apply_change(&mut table, change);
        }
        assert_eq!(table.len(), 2);
        let mut undo = Vec::new();
        diff_rows(&[&SALES], vec![sale(1, "tea", 2), sale(1, "cake", 1)], vec![], &mut undo);
        for change in &undo {
            apply_change(&mut table, change);
        }
        let tea = table.values().next().expect("tea remains");
        assert_eq!(tea[2], Value::Integer(3), "only the other instance's contribution is left");
        assert_eq!(table.len(), 1, "a row whose sums reach zero is removed");
    }

    #[test]
    fn a_query_becomes_sql_with_every_value_bound() {
        let query = TableQuery {
            filters: vec![Filter {
                column: "sku",
                comparison: Comparison::Eq,
                value: Value::Text("tea".into()),
            }],
            order_by: vec!["day", "sku"],
            descending: true,
            after: Some(vec![Value::Integer(1), Value::Text("x".into())]),
            limit: Some(3),
        };
        let (sql, values) = select_sql(&SALES, &query, |n| format!("${n}"));
        assert_eq!(
            sql,
            "SELECT day, sku, units FROM sales WHERE sku = $1 AND (day, sku) < ($2, $3) ORDER BY day DESC, sku DESC"
        );
        assert_eq!(values.len(), 3);
    }

    #[test]
    fn an_instance_cannot_state_two_rows_with_one_key() {
        static LIST: TableSpec = TableSpec {
            name: "list",
            columns: &[
                Column::new("id", ColumnType::Text),
                Column::nullable("note", ColumnType::Text),
            ],
            key_columns: 1,
            indexes: &[],
            kind: TableKind::Rows,
        };
        let row = |id: &str| ("list", vec![Value::Text(id.into()), Value::Null]);
        assert!(check_rows(&[&LIST], &[row("a"), row("b")]).is_ok());
        assert!(check_rows(&[&LIST], &[row("a"), row("a")]).unwrap_err().contains("two rows"));
        let by_note = TableQuery { order_by: vec!["note"], ..TableQuery::default() };
        assert!(
            by_note.check(&LIST).unwrap_err().contains("may be null"),
            "nullable columns do not order queries"
        );
    }

    #[test]
    fn rows_that_do_not_fit_are_named() {
        assert!(check_rows(&[&SALES], &[sale(1, "tea", 1)]).is_ok());
        let mut bad = sale(1, "tea", 1);
        bad.1[1] = Value::Text("nul\0".into());
        assert!(check_rows(&[&SALES], &[bad]).unwrap_err().contains("sales.sku"));
        assert!(check_rows(&[&SALES], &[("other", vec![])]).unwrap_err().contains("other"));
        assert!(SALES.check().is_ok());
    }
}
