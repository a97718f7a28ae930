//! Parsing JSON from the other side: an error names the field that was refused
//! (`desired.release: invalid value ...`), so a malformed or hostile answer says where it is wrong.

use serde::de::DeserializeOwned;

use crate::api::BadField;

/// `bytes` as a `T`, or what is wrong and where (`field` is `(document)` when the JSON itself
/// is malformed or of the wrong kind).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BadField> {
    let d = &mut serde_json::Deserializer::from_slice(bytes);
    let v = serde_path_to_error::deserialize(d).map_err(|e| {
        let field = e.path().to_string();
        BadField {
            // `?`: inside an object whose next key was never read (the JSON ends or breaks)
            field: if field == "." || field == "?" {
                "(document)".into()
            } else {
                field
            },
            reason: e.inner().to_string(),
        }
    })?;
    Ok(v)
}

/// Refuses a JSON value holding a number that is not an integer (or an integer too large for
/// 64 bits, which serde_json keeps as a float), anywhere in it: signed values are canonical
/// JSON, which holds only integers, and a float would not even pass on unchanged (serde_json's
/// float parsing does not round-trip every value). Iterative, so depth costs no stack.
pub fn integers_only(v: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Number(n) if !n.is_i64() && !n.is_u64() => {
                return Err(format!(
                    "{n} is not an integer of at most 64 bits: signed JSON holds only those"
                ));
            }
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::api::CheckInResponse;

    #[test]
    fn a_bad_release_in_an_answer_is_an_error_naming_the_field() {
        let good = format!(
            r#"{{"status":"accepted","next_checkin_secs":60,"desired":{{"channel":"c",
            "release":"{}","metadata_path":"/api/v1/trust/metadata/","objects_path":"/api/v1/objects"}}}}"#,
            "a".repeat(64)
        );
        let r: CheckInResponse = super::from_slice(good.as_bytes()).unwrap();
        assert_eq!(r.desired.unwrap().release.to_string(), "a".repeat(64));
        for bad in ["é".repeat(32), "\\u001b[2J".into(), "A".repeat(64)] {
            let body = good.replace(&"a".repeat(64), &bad);
            let e = super::from_slice::<CheckInResponse>(body.as_bytes()).unwrap_err();
            assert_eq!(e.field, "desired.release", "{e}");
            assert!(e.reason.contains("release id"), "{e}");
        }
        let e = super::from_slice::<CheckInResponse>(b"{").unwrap_err();
        assert_eq!(e.field, "(document)", "{e}");
    }
}
