//! Projection tables on SQLite: the SQL for a [`TableSpec`] (its `CREATE TABLE`, the
//! statements of each [`RowChange`], a [`TableQuery`]'s `SELECT`) and the mapping between
//! [`Value`]s and SQLite's types.
//!
//! Dates are stored as `YYYY-MM-DD` text and instants as RFC 3339 text with six fractional
//! digits and `Z`, so that text order is time order and any SQL tool reads them as dates.
//! Table and column names come from specs checked by [`TableSpec::check`], so they are
//! plain identifiers and need no quoting; values are always bound, never formatted in.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::mem::{Discriminant, discriminant};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{CachedStatement, Transaction, params_from_iter};
use strata::Slot;
use strata::table::{ColumnType, RowChange, TableQuery, TableSpec, Value};

use crate::error::DbError;

fn sql_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Integer => "INTEGER",
        ColumnType::Text | ColumnType::Date | ColumnType::Timestamp => "TEXT",
    }
}

/// `CREATE TABLE` and `CREATE INDEX` statements for `spec` under the name `name`.
pub(crate) fn create(spec: &TableSpec, name: &str) -> String {
    strata::table::create_sql(spec, name, sql_type, " STRICT, WITHOUT ROWID")
}

/// Binds a [`Value`] as SQLite stores it.
pub(crate) fn to_sql(value: &Value) -> ToSqlOutput<'_> {
    match value {
        Value::Null => ToSqlOutput::Owned(SqlValue::Null),
        Value::Integer(n) => ToSqlOutput::Owned(SqlValue::Integer(*n)),
        Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        Value::Date(day) => ToSqlOutput::Owned(SqlValue::Text(day.format("%Y-%m-%d").to_string())),
        Value::Timestamp(at) => {
            ToSqlOutput::Owned(SqlValue::Text(at.to_rfc3339_opts(SecondsFormat::Micros, true)))
        }
    }
}

fn from_sql(
    ty: ColumnType,
    value: ValueRef<'_>,
    table: &str,
    column: &str,
) -> Result<Value, DbError> {
    let corrupt =
        || DbError::Corrupt(format!("{table}.{column} holds a value that is not a {ty:?}"));
    Ok(match (ty, value) {
        (_, ValueRef::Null) => Value::Null,
        (ColumnType::Integer, ValueRef::Integer(n)) => Value::Integer(n),
        (ColumnType::Text, ValueRef::Text(text)) => {
            Value::Text(std::str::from_utf8(text).map_err(|_| corrupt())?.to_owned())
        }
        (ColumnType::Date, ValueRef::Text(text)) => {
            let text = std::str::from_utf8(text).map_err(|_| corrupt())?;
            Value::Date(NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| corrupt())?)
        }
        (ColumnType::Timestamp, ValueRef::Text(text)) => {
            let text = std::str::from_utf8(text).map_err(|_| corrupt())?;
            let at = DateTime::parse_from_rfc3339(text).map_err(|_| corrupt())?;
            Value::Timestamp(at.with_timezone(&Utc))
        }
        _ => return Err(corrupt()),
    })
}

/// Runs a commit's row changes against their tables in `slot`. Each table's statements are
/// written and looked up once per commit, not once per row: a view commit can hold
/// thousands of rows of one table, and building the SQL text for each showed in profiles.
pub(crate) fn apply(
    transaction: &Transaction<'_>,
    slot: Slot,
    changes: &[RowChange],
) -> Result<(), DbError> {
    // By table and kind of change (upsert, delete, add).
    let mut prepared: HashMap<(&'static str, Discriminant<RowChange>), Prepared<'_>> =
        HashMap::new();
    for change in changes {
        let spec = change.table();
        let statements = match prepared.entry((spec.name, discriminant(change))) {
            Entry::Occupied(found) => found.into_mut(),
            Entry::Vacant(missing) => {
                let (first, then) = statements_for(spec, &slot.table(spec.name), change);
                let then = then.map(|sql| transaction.prepare_cached(&sql)).transpose()?;
                missing.insert(Prepared { first: transaction.prepare_cached(&first)?, then })
            }
        };
        let (RowChange::Upsert { row: values, .. }
        | RowChange::Delete { key: values, .. }
        | RowChange::Add { row: values, .. }) = change;
        statements.first.execute(params_from_iter(values.iter().map(to_sql)))?;
        if let Some(then) = &mut statements.then {
            let key = &values[..spec.key_columns];
            then.execute(params_from_iter(key.iter().map(to_sql)))?;
        }
    }
    Ok(())
}

/// A change's statements: the one it runs, and for an `Add` the delete that follows.
struct Prepared<'t> {
    first: CachedStatement<'t>,
    /// Bound to the row's key columns.
    then: Option<CachedStatement<'t>>,
}

/// The SQL of `change` against the table `name`: one statement, or for an `Add` the sum's
/// upsert and then the delete of a row whose sums all became zero.
fn statements_for(spec: &TableSpec, name: &str, change: &RowChange) -> (String, Option<String>) {
    let k = spec.key_columns;
    let key_match: Vec<String> =
        spec.key().iter().enumerate().map(|(i, c)| format!("{} = ?{}", c.name, i + 1)).collect();
    let key_match = key_match.join(" AND ");
    match change {
        RowChange::Upsert { .. } => (upsert(spec, name, |c| format!("{c} = excluded.{c}")), None),
        RowChange::Delete { .. } => (format!("DELETE FROM {name} WHERE {key_match}"), None),
        RowChange::Add { .. } => {
            let zero: Vec<String> =
                spec.columns[k..].iter().map(|c| format!("{} = 0", c.name)).collect();
            let drop_zero =
                format!("DELETE FROM {name} WHERE {key_match} AND {}", zero.join(" AND "));
            (upsert(spec, name, |c| format!("{c} = {c} + excluded.{c}")), Some(drop_zero))
        }
    }
}

/// `INSERT … ON CONFLICT (key) DO UPDATE SET <set(column)>…` over every column.
fn upsert(spec: &TableSpec, name: &str, set: impl Fn(&str) -> String) -> String {
    let columns: Vec<&str> = spec.columns.iter().map(|c| c.name).collect();
    let slots: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let key: Vec<&str> = spec.key().iter().map(|c| c.name).collect();
    let rest: Vec<String> = spec.columns[spec.key_columns..].iter().map(|c| set(c.name)).collect();
    let on_conflict = if rest.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", rest.join(", "))
    };
    format!(
        "INSERT INTO {name} ({}) VALUES ({}) ON CONFLICT ({}) {on_conflict}",
        columns.join(", "),
        slots.join(", "),
        key.join(", ")
    )
}

/// Moves a rebuilt table into place: the live table is made again from the spec (so a
/// changed spec takes effect with the rebuild) and filled with the rebuild's rows, column
/// by column.
pub(crate) fn swap(
    transaction: &Transaction<'_>,
    spec: &TableSpec,
    live: &str,
    rebuilt: &str,
) -> Result<(), DbError> {
    let columns: Vec<&str> = spec.columns.iter().map(|c| c.name).collect();
    let columns = columns.join(", ");
    transaction.execute_batch(&format!(
        "DROP TABLE IF EXISTS {live}; {} INSERT INTO {live} ({columns}) SELECT {columns} FROM {rebuilt}; DROP TABLE {rebuilt};",
        create(spec, live)
    ))?;
    Ok(())
}

/// Runs `query` on the live table of `spec`.
pub(crate) fn select(
    connection: &rusqlite::Connection,
    spec: &TableSpec,
    query: &TableQuery,
) -> Result<Vec<Vec<Value>>, DbError> {
    let (mut sql, values) = strata::table::select_sql(spec, query, |n| format!("?{n}"));
    let mut bound: Vec<ToSqlOutput<'_>> = values.into_iter().map(to_sql).collect();
    if let Some(limit) = query.limit {
        bound.push(ToSqlOutput::Owned(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX))));
        sql.push_str(&format!(" LIMIT ?{}", bound.len()));
    }
    let mut statement = connection.prepare_cached(&sql)?;
    let mut rows = statement.query(params_from_iter(bound))?;
    let mut found = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(spec.columns.len());
        for (i, column) in spec.columns.iter().enumerate() {
            values.push(from_sql(column.ty, row.get_ref(i)?, spec.name, column.name)?);
        }
        found.push(values);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata::table::{Column, TableKind};

    static T: TableSpec = TableSpec {
        name: "t",
        columns: &[Column::new("a", ColumnType::Text), Column::new("n", ColumnType::Integer)],
        key_columns: 1,
        indexes: &[&["n"]],
        kind: TableKind::Sums,
    };

    /// An audit must not scan: each subject's query reads its index of the audit table.
    #[test]
    fn audits_read_an_index_of_the_audit_table() {
        use strata::{AuditQuery, AuditSubject, Position, StreamId};
        let connection = rusqlite::Connection::open_in_memory().expect("a database");
        connection
            .execute_batch(&create(&strata::audit::AUDIT_EVENTS, "audit_events"))
            .expect("create");
        for (subject, index) in [
            (AuditSubject::Correlation("c".into()), "audit_events_idx0"),
            (AuditSubject::Stream(StreamId::new("order", "o1")), "audit_events_idx1"),
            (AuditSubject::User("u".into()), "audit_events_idx2"),
        ] {
            let query =
                AuditQuery { subject, from: None, to: None, before: Some(Position(9)), limit: 10 };
            let table_query = query.table_query();
            let (sql, values) =
                strata::table::select_sql(&strata::audit::AUDIT_EVENTS, &table_query, |n| {
                    format!("?{n}")
                });
            let mut statement =
                connection.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("explain");
            let plan: Vec<String> = statement
                .query_map(params_from_iter(values.into_iter().map(to_sql)), |row| {
                    row.get::<_, String>(3)
                })
                .expect("plan")
                .collect::<Result<_, _>>()
                .expect("plan rows");
            let plan = plan.join("; ");
            assert!(plan.contains(index) && !plan.contains("SCAN audit_events"), "{sql}: {plan}");
        }
    }

    #[test]
    fn statements_name_only_spec_columns() {
        assert_eq!(
            create(&T, "t__rebuild"),
            "CREATE TABLE IF NOT EXISTS t__rebuild (a TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (a)) STRICT, WITHOUT ROWID;\n\
             CREATE INDEX IF NOT EXISTS t__rebuild_idx0 ON t__rebuild (n);\n"
        );
        assert_eq!(
            upsert(&T, "t", |c| format!("{c} = {c} + excluded.{c}")),
            "INSERT INTO t (a, n) VALUES (?1, ?2) ON CONFLICT (a) DO UPDATE SET n = n + excluded.n"
        );
    }
}
