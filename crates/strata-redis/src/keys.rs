//! Where everything lives in Redis, under one prefix (`strata:` by default):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{prefix}{slot}:{view_id}` | string | the view's JSON, as every backend encodes it |
//! | `{prefix}checkpoint:{slot}` | hash | `position`, `revision`, `version`; for a rebuild `started_at` and `error` |
//! | `{prefix}view-positions:{slot}` | hash | view id → position of the last event applied to it |
//! | `{prefix}view-parking:{slot}` | hash | view id → why it is parked (parked instances only) |
//! | `{prefix}parked-events:{slot}` | hash | `{len}:{view_id}:{position}` → a waiting event |
//! | `{prefix}skipped-events:{projection}` | hash | `{len}:{view_id}:{position}` → an event an operator skipped |
//! | `{prefix}table-rows:{table}` | hash | a table row's key → the row |
//!
//! `{slot}` is the projection's name for the live views and `{name}#rebuild` for a rebuild's
//! (`Slot::key`); a rebuild's tables are `{table}__rebuild`. Projection names are
//! `[a-z0-9_]`, so the internal names (which hold a `-`) never meet a projection's views;
//! only the name `checkpoint` would, and it is refused.

use strata::{Slot, ViewError, check_projection_name};

/// The one projection name whose views would share keys with the checkpoints.
const RESERVED: &str = "checkpoint";

/// The keys of one manager's prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Checks a projection name for use in keys.
    pub(crate) fn check(projection: &str) -> Result<(), ViewError> {
        check_projection_name(projection)?;
        if projection == RESERVED {
            return Err(ViewError::InvalidName(projection.to_owned()));
        }
        Ok(())
    }

    /// What every view key of `slot` starts with; the view id follows.
    pub(crate) fn views(&self, projection: &str, slot: Slot) -> String {
        format!("{}{}:", self.prefix, slot.key(projection))
    }

    pub(crate) fn view(&self, projection: &str, slot: Slot, id: &str) -> String {
        format!("{}{id}", self.views(projection, slot))
    }

    pub(crate) fn checkpoint(&self, projection: &str, slot: Slot) -> String {
        format!("{}checkpoint:{}", self.prefix, slot.key(projection))
    }

    pub(crate) fn positions(&self, projection: &str, slot: Slot) -> String {
        format!("{}view-positions:{}", self.prefix, slot.key(projection))
    }

    pub(crate) fn parking(&self, projection: &str, slot: Slot) -> String {
        format!("{}view-parking:{}", self.prefix, slot.key(projection))
    }

    pub(crate) fn parked_events(&self, projection: &str, slot: Slot) -> String {
        format!("{}parked-events:{}", self.prefix, slot.key(projection))
    }

    pub(crate) fn skipped(&self, projection: &str) -> String {
        format!("{}skipped-events:{projection}", self.prefix)
    }

    pub(crate) fn table(&self, slot: Slot, table: &str) -> String {
        format!("{}table-rows:{}", self.prefix, slot.table(table))
    }
}

/// The field of an event in a slot's hash of waiting (or a projection's hash of skipped)
/// events: the view id after its length, so that no id's fields start with another id's
/// prefix, then the position padded so that one instance's fields sort by position.
pub(crate) fn instance_field(view_id: &str, position: u64) -> String {
    format!("{}{position:020}", instance_prefix(view_id))
}

/// What every field of `view_id` in such a hash starts with.
pub(crate) fn instance_prefix(view_id: &str) -> String {
    format!("{}:{view_id}:", view_id.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_instance_takes_another_instances_fields() {
        for (id, other) in [("a", "a\nb"), ("a", "ab"), ("a:1", "a"), ("1:a", "a")] {
            let prefix = instance_prefix(id);
            assert!(!instance_field(other, 7).starts_with(&prefix), "{id:?} takes {other:?}'s");
            assert!(instance_field(id, 7).starts_with(&prefix));
        }
    }
}
