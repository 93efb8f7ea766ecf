//! Blocking queries: the store's one implementation ([`pier_store::blocking`]), answering in
//! the catalog's [`Versioned`] type.

pub use pier_store::blocking::{QueryOptions, DEFAULT_WAIT, MAX_WAIT};
use pier_store::{StateView, Store, WatchKey};

use crate::error::CatalogError;
use crate::model::Versioned;

/// Runs `query` as a blocking query. `query` returns its result and the keys it depends on.
pub async fn blocking_query<R, F>(
    store: &Store,
    opts: &QueryOptions,
    query: F,
) -> Result<Versioned<R>, CatalogError>
where
    F: Fn(&StateView<'_>) -> Result<(R, Vec<WatchKey>), CatalogError>,
{
    let (index, value) = pier_store::blocking::blocking_query(store, opts, query).await?;
    Ok(Versioned { index, value })
}
