//! Reading what a store holds from a `pier snapshot save` archive: the store's own bytes,
//! one JSON line per record in `pier-snapshot/store.jsonl` (`t` table, `k` key, `v` base64
//! value). Tests use it to check what is at rest (sealed keys, left-over records).

use std::path::Path;
use std::process::Command;

use base64::Engine;

/// Every record of `table` in the archive: (key, value bytes).
pub fn stored_records(snapshot: &Path, table: &str) -> Vec<(String, Vec<u8>)> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(snapshot)
        .arg("pier-snapshot/store.jsonl")
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar -xOf {}: {out:?}",
        snapshot.display()
    );
    let text = String::from_utf8(out.stdout).expect("store.jsonl is UTF-8");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON record line"))
        .filter(|l| l["t"] == table)
        .map(|l| {
            let key = l["k"].as_str().unwrap_or_default().to_string();
            let value = base64::engine::general_purpose::STANDARD
                .decode(l["v"].as_str().unwrap_or_default())
                .expect("base64 value");
            (key, value)
        })
        .collect()
}

/// The JSON record of `key` in `table`; panics when it is not there.
pub fn stored_json(snapshot: &Path, table: &str, key: &str) -> serde_json::Value {
    let (_, value) = stored_records(snapshot, table)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no record {key:?} in table {table} of the snapshot"));
    serde_json::from_slice(&value).expect("a JSON record")
}
