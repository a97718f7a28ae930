//! Canonical JSON, as TUF signs it: the OLPC form (sorted keys, no insignificant whitespace,
//! integers only, strings escaping only `"` and `\`), by the olpc-cjson formatter.

use serde::Serialize;

/// The canonical bytes of a value.
pub fn to_vec(value: &impl Serialize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut buf, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser).map_err(|e| e.to_string())?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sorted_and_compact() {
        let v = serde_json::json!({"b": 1, "a": {"d": [1, "x\"y"], "c": true}});
        assert_eq!(
            super::to_vec(&v).unwrap(),
            br#"{"a":{"c":true,"d":[1,"x\"y"]},"b":1}"#
        );
        // Floats are not canonical JSON.
        assert!(super::to_vec(&serde_json::json!({"a": 1.5})).is_err());
    }
}
