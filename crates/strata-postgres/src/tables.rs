//! Projection tables on PostgreSQL: the SQL for a [`TableSpec`] (its `CREATE TABLE`, a
//! commit's [`RowChange`]s, a [`TableQuery`]'s `SELECT`) and the mapping between [`Value`]s
//! and PostgreSQL's types (`bigint`, `text`, `date`, `timestamptz`).
//!
//! A commit's changes to one table are sent as at most four statements whatever their
//! number (deletes, upserts, sums, and removing sums that reached zero), each taking one
//! array per column through `unnest`: a batch of thousands of rows costs four round trips,
//! not thousands. Table and column names come from specs checked by [`TableSpec::check`],
//! so they are plain identifiers; values are always bound.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::DbError;
use strata::table::{ColumnType, RowChange, TableQuery, TableSpec, Value};

fn sql_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Integer => "bigint",
        ColumnType::Text => "text",
        ColumnType::Date => "date",
        ColumnType::Timestamp => "timestamptz",
    }
}

/// `CREATE TABLE` and `CREATE INDEX` statements for `spec` under the name `name`.
pub(crate) fn create(spec: &TableSpec, name: &str) -> String {
    strata::table::create_sql(spec, name, sql_type, "")
}

/// The values of one column across rows, typed as PostgreSQL wants the array.
enum ColumnArray {
    Integer(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Date(Vec<Option<NaiveDate>>),
    Timestamp(Vec<Option<DateTime<Utc>>>),
}

impl ColumnArray {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::Integer => ColumnArray::Integer(Vec::new()),
            ColumnType::Text => ColumnArray::Text(Vec::new()),
            ColumnType::Date => ColumnArray::Date(Vec::new()),
            ColumnType::Timestamp => ColumnArray::Timestamp(Vec::new()),
        }
    }

    fn push(&mut self, value: &Value) {
        // Values were checked against their columns by the core; anything else is null.
        match self {
            ColumnArray::Integer(values) => values.push(value.as_integer()),
            ColumnArray::Text(values) => values.push(value.as_text().map(str::to_owned)),
            ColumnArray::Date(values) => values.push(match value {
                Value::Date(day) => Some(*day),
                _ => None,
            }),
            ColumnArray::Timestamp(values) => values.push(match value {
                Value::Timestamp(at) => Some(*at),
                _ => None,
            }),
        }
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            ColumnArray::Integer(values) => values,
            ColumnArray::Text(values) => values,
            ColumnArray::Date(values) => values,
            ColumnArray::Timestamp(values) => values,
        }
    }
}

/// Rows of `spec`, column by column, from the first `width` values of each row.
fn arrays<'a>(
    spec: &TableSpec,
    width: usize,
    rows: impl Iterator<Item = &'a [Value]>,
) -> Vec<ColumnArray> {
    let mut arrays: Vec<ColumnArray> =
        spec.columns[..width].iter().map(|c| ColumnArray::new(c.ty)).collect();
    for row in rows {
        for (array, value) in arrays.iter_mut().zip(row) {
            array.push(value);
        }
    }
    arrays
}

/// `SELECT * FROM unnest($1::t1[], $2::t2[], …)` over the first `width` columns.
fn unnest(spec: &TableSpec, width: usize) -> String {
    let arrays: Vec<String> = spec.columns[..width]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, sql_type(c.ty)))
        .collect();
    format!("SELECT * FROM unnest({})", arrays.join(", "))
}

async fn run(
    transaction: &Transaction<'_>,
    sql: &str,
    arrays: &[ColumnArray],
) -> Result<(), DbError> {
    let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(ColumnArray::as_sql).collect();
    let statement = transaction.prepare_cached(sql).await?;
    transaction.execute(&statement, &params).await?;
    Ok(())
}

/// Writes every change of a commit to the tables of one slot (`name` maps a spec to the
/// slot's table name).
pub(crate) async fn apply(
    transaction: &Transaction<'_>,
    changes: &[RowChange],
    name: impl Fn(&TableSpec) -> String,
) -> Result<(), DbError> {
    // Grouped by table; sums for one key are added up first, since one statement cannot
    // change a row twice.
    let mut by_table: Vec<(&'static TableSpec, Vec<&RowChange>)> = Vec::new();
    for change in changes {
        match by_table.iter_mut().find(|(spec, _)| std::ptr::eq(*spec, change.table())) {
            Some((_, list)) => list.push(change),
            None => by_table.push((change.table(), vec![change])),
        }
    }
    for (spec, changes) in by_table {
        let table = name(spec);
        let k = spec.key_columns;
        let key: Vec<&str> = spec.key().iter().map(|c| c.name).collect();
        let columns: Vec<&str> = spec.columns.iter().map(|c| c.name).collect();
        let deletes = changes.iter().filter_map(|change| match change {
            RowChange::Delete { key, .. } => Some(key.as_slice()),
            _ => None,
        });
        let deletes = arrays(spec, k, deletes);
        if deletes.first().is_some_and(|array| !is_empty(array)) {
            let sql =
                format!("DELETE FROM {table} WHERE ({}) IN ({})", key.join(", "), unnest(spec, k));
            run(transaction, &sql, &deletes).await?;
        }
        let upserts = changes.iter().filter_map(|change| match change {
            RowChange::Upsert { row, .. } => Some(row.as_slice()),
            _ => None,
        });
        let upserts = arrays(spec, spec.columns.len(), upserts);
        if upserts.first().is_some_and(|array| !is_empty(array)) {
            let set: Vec<String> =
                columns[k..].iter().map(|c| format!("{c} = excluded.{c}")).collect();
            let action = if set.is_empty() {
                "DO NOTHING".to_owned()
            } else {
                format!("DO UPDATE SET {}", set.join(", "))
            };
            let sql = format!(
                "INSERT INTO {table} ({}) {} ON CONFLICT ({}) {action}",
                columns.join(", "),
                unnest(spec, spec.columns.len()),
                key.join(", ")
            );
            run(transaction, &sql, &upserts).await?;
        }
        let mut sums: HashMap<Vec<Value>, Vec<i64>> = HashMap::new();
        for change in &changes {
            if let RowChange::Add { row, .. } = change {
                let totals =
                    sums.entry(row[..k].to_vec()).or_insert_with(|| vec![0; row.len() - k]);
                for (total, delta) in totals.iter_mut().zip(&row[k..]) {
                    *total = total.saturating_add(delta.as_integer().unwrap_or(0));
                }
            }
        }
        if !sums.is_empty() {
            let rows: Vec<Vec<Value>> = sums
                .into_iter()
                .map(|(mut key, totals)| {
                    key.extend(totals.into_iter().map(Value::Integer));
                    key
                })
                .collect();
            let added = arrays(spec, spec.columns.len(), rows.iter().map(Vec::as_slice));
            let set: Vec<String> =
                columns[k..].iter().map(|c| format!("{c} = {table}.{c} + excluded.{c}")).collect();
            let sql = format!(
                "INSERT INTO {table} ({}) {} ON CONFLICT ({}) DO UPDATE SET {}",
                columns.join(", "),
                unnest(spec, spec.columns.len()),
                key.join(", "),
                set.join(", ")
            );
            run(transaction, &sql, &added).await?;
            let keys = arrays(spec, k, rows.iter().map(Vec::as_slice));
            let zero: Vec<String> = columns[k..].iter().map(|c| format!("{c} = 0")).collect();
            let sql = format!(
                "DELETE FROM {table} WHERE ({}) IN ({}) AND {}",
                key.join(", "),
                unnest(spec, k),
                zero.join(" AND ")
            );
            run(transaction, &sql, &keys).await?;
        }
    }
    Ok(())
}

fn is_empty(array: &ColumnArray) -> bool {
    match array {
        ColumnArray::Integer(values) => values.is_empty(),
        ColumnArray::Text(values) => values.is_empty(),
        ColumnArray::Date(values) => values.is_empty(),
        ColumnArray::Timestamp(values) => values.is_empty(),
    }
}

/// One bound value of a query.
fn param(value: &Value) -> Box<dyn ToSql + Sync + Send> {
    match value {
        Value::Null => Box::new(None::<i64>),
        Value::Integer(n) => Box::new(*n),
        Value::Text(text) => Box::new(text.clone()),
        Value::Date(day) => Box::new(*day),
        Value::Timestamp(at) => Box::new(*at),
    }
}

/// The `SELECT` for `query` on the live table of `spec`, and its parameters.
pub(crate) fn select(
    spec: &TableSpec,
    query: &TableQuery,
) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let (mut sql, values) = strata::table::select_sql(spec, query, |n| format!("${n}"));
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = values.into_iter().map(param).collect();
    if let Some(limit) = query.limit {
        params.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" LIMIT ${}", params.len()));
    }
    (sql, params)
}

/// Reads a selected row back into values.
pub(crate) fn row_values(spec: &TableSpec, row: &Row) -> Result<Vec<Value>, DbError> {
    let mut values = Vec::with_capacity(spec.columns.len());
    for (i, column) in spec.columns.iter().enumerate() {
        let value = match column.ty {
            ColumnType::Integer => row.try_get::<_, Option<i64>>(i)?.map(Value::Integer),
            ColumnType::Text => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
            ColumnType::Date => row.try_get::<_, Option<NaiveDate>>(i)?.map(Value::Date),
            ColumnType::Timestamp => {
                row.try_get::<_, Option<DateTime<Utc>>>(i)?.map(Value::Timestamp)
            }
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(values)
}

/// Moves a rebuilt table into place by renaming it and its indexes, so that readers wait
/// for a catalogue change rather than a copy of every row. The spec's DDL runs afterwards:
/// it adds only what the rebuilt table lacks (nothing, when it was made from this spec).
pub(crate) fn swap(spec: &TableSpec, live: &str, rebuilt: &str) -> String {
    let mut sql = format!(
        "DROP TABLE IF EXISTS {live}; ALTER TABLE {rebuilt} RENAME TO {live}; \
         ALTER INDEX IF EXISTS {rebuilt}_pkey RENAME TO {live}_pkey;\n"
    );
    for i in 0..spec.indexes.len() {
        sql.push_str(&format!("ALTER INDEX IF EXISTS {rebuilt}_idx{i} RENAME TO {live}_idx{i};\n"));
    }
    sql.push_str(&create(spec, live));
    sql
}
