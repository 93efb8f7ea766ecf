//! Typed access to a table whose values are JSON.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;
use crate::model::{Entry, Op, Table};
use crate::state::StateView;

/// A decoded value with its indexes.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

/// `TypedTable::<Service>::new(Table::SERVICES)`: get/list from a `StateView`, build ops.
pub struct TypedTable<T> {
    table: Table,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for TypedTable<T> {
    fn clone(&self) -> Self {
        TypedTable {
            table: self.table.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> TypedTable<T> {
    pub const fn new(table: Table) -> Self {
        TypedTable {
            table,
            _t: PhantomData,
        }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    fn decode(&self, key: &str, e: &Entry) -> Result<Versioned<T>, StoreError> {
        let value = serde_json::from_slice(&e.value).map_err(|err| StoreError::Decode {
            table: self.table.to_string(),
            key: key.to_string(),
            detail: err.to_string(),
        })?;
        Ok(Versioned {
            value,
            flags: e.flags,
            create_index: e.create_index,
            modify_index: e.modify_index,
        })
    }

    pub fn get(&self, view: &StateView<'_>, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        view.get(&self.table, key)
            .map(|e| self.decode(key, e))
            .transpose()
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn list(
        &self,
        view: &StateView<'_>,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned<T>)>, StoreError> {
        view.range_prefix(&self.table, prefix)
            .map(|(k, e)| Ok((k.to_string(), self.decode(k, e)?)))
            .collect()
    }

    fn encode(&self, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| {
            StoreError::InvalidInput(format!(
                "value for {}/{key} does not encode as JSON: {e}",
                self.table
            ))
        })
    }

    pub fn put(&self, key: impl Into<String>, value: &T) -> Result<Op, StoreError> {
        let key = key.into();
        let value = self.encode(&key, value)?;
        Ok(Op::Put {
            table: self.table.clone(),
            key,
            value,
            flags: 0,
            cas: None,
        })
    }

    /// Put only if the entry's modify_index is `cas` (0 = only if absent).
    pub fn put_cas(&self, key: impl Into<String>, value: &T, cas: u64) -> Result<Op, StoreError> {
        let key = key.into();
        let value = self.encode(&key, value)?;
        Ok(Op::Put {
            table: self.table.clone(),
            key,
            value,
            flags: 0,
            cas: Some(cas),
        })
    }

    pub fn delete(&self, key: impl Into<String>) -> Op {
        Op::delete(self.table.clone(), key)
    }

    pub fn delete_prefix(&self, prefix: impl Into<String>) -> Op {
        Op::delete_prefix(self.table.clone(), prefix)
    }
}
