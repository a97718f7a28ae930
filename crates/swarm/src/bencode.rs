//! Bencode (BEP 3): a writer for what we make (torrent files, tracker answers) and a bounded
//! reader for what we are given (torrent files from the server).

use std::collections::BTreeMap;

/// A bencoded value. Dictionaries are kept sorted by their raw keys, as BEP 3 requires, so
/// the same value always encodes to the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    pub fn str(s: &str) -> Self {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<const N: usize>(pairs: [(&str, Value); N]) -> Self {
        Value::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Value::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    out.extend_from_slice(format!("{}:", k.len()).as_bytes());
                    out.extend_from_slice(k);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// What is wrong with bencoded input, and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bencode at byte {at}: {what}")]
pub struct DecodeError {
    pub at: usize,
    pub what: &'static str,
}

/// Where each value of the top-level dictionary lies in the input, by key.
pub type Spans = BTreeMap<Vec<u8>, (usize, usize)>;

/// Nesting deeper than this is refused (no recursion on the input's depth beyond it).
const MAX_DEPTH: usize = 32;

/// Decodes one value that must span all of `input`. Returns the value and, for the
/// top-level dictionary's keys, the byte range each value took (the info hash is the SHA-1
/// of the `info` value's bytes as given).
pub fn decode(input: &[u8]) -> Result<(Value, Spans), DecodeError> {
    let mut r = Reader {
        input,
        pos: 0,
        spans: BTreeMap::new(),
    };
    let v = r.value(0)?;
    if r.pos != input.len() {
        return Err(r.err("trailing bytes after the value"));
    }
    Ok((v, r.spans))
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    spans: Spans,
}

impl Reader<'_> {
    fn err(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.pos, what }
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(self.err("unexpected end"))
    }

    fn number_until(&mut self, end: u8) -> Result<i64, DecodeError> {
        let start = self.pos;
        while self.peek()? != end {
            self.pos += 1;
            if self.pos - start > 20 {
                return Err(self.err("number too long"));
            }
        }
        let text = std::str::from_utf8(&self.input[start..self.pos])
            .map_err(|_| self.err("not a number"))?;
        // no leading zeros, no negative zero
        let ok = !text.is_empty()
            && (text.len() == 1 || !text.starts_with('0'))
            && !text.starts_with("-0");
        let n: i64 = text
            .parse()
            .ok()
            .filter(|_| ok)
            .ok_or(self.err("not a number"))?;
        self.pos += 1;
        Ok(n)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.number_until(b':')?;
        let n = usize::try_from(n).map_err(|_| self.err("negative length"))?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.input.len())
            .ok_or(self.err("string past the end"))?;
        let b = self.input[self.pos..end].to_vec();
        self.pos = end;
        Ok(b)
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deep"));
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                Ok(Value::Int(self.number_until(b'e')?))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                self.pos += 1;
                let mut l = Vec::new();
                while self.peek()? != b'e' {
                    l.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(l))
            }
            b'd' => {
                self.pos += 1;
                let mut d = BTreeMap::new();
                let mut last: Option<Vec<u8>> = None;
                while self.peek()? != b'e' {
                    let k = self.bytes()?;
                    if last.as_ref().is_some_and(|l| *l >= k) {
                        return Err(self.err("dictionary keys not sorted or repeated"));
                    }
                    let start = self.pos;
                    let v = self.value(depth + 1)?;
                    if depth == 0 {
                        self.spans.insert(k.clone(), (start, self.pos));
                    }
                    last = Some(k.clone());
                    d.insert(k, v);
                }
                self.pos += 1;
                Ok(Value::Dict(d))
            }
            _ => Err(self.err("not a bencoded value")),
        }
    }
}

/// A tracker's failure answer (BEP 3): `d14:failure reason...e`.
pub fn failure(reason: &str) -> Vec<u8> {
    Value::dict([("failure reason", Value::str(reason))]).encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sorted_keys() {
        let v = Value::dict([
            ("zeta", Value::Int(-3)),
            ("alpha", Value::List(vec![Value::str("x"), Value::Int(0)])),
        ]);
        let b = v.encode();
        assert_eq!(b, b"d5:alphal1:xi0ee4:zetai-3ee");
        let (back, spans) = decode(&b).unwrap();
        assert_eq!(back, v);
        assert_eq!(spans[b"alpha".as_slice()], (8, 16));
    }

    #[test]
    fn bad_input_is_refused_with_its_place() {
        for (input, what) in [
            (&b"i03e"[..], "not a number"),
            (b"i-0e", "not a number"),
            (b"ie", "not a number"),
            (b"5:abc", "string past the end"),
            (b"d1:bi1e1:ai2ee", "dictionary keys not sorted or repeated"),
            (b"i1ei2e", "trailing bytes after the value"),
            (b"x", "not a bencoded value"),
            (b"l", "unexpected end"),
            (b"99999999999999999999999:", "number too long"),
        ] {
            let e = decode(input).unwrap_err();
            assert_eq!(e.what, what, "{}", String::from_utf8_lossy(input));
        }
        let deep = format!("{}{}", "l".repeat(100), "e".repeat(100));
        assert_eq!(decode(deep.as_bytes()).unwrap_err().what, "nested too deep");
    }

    #[test]
    fn failure_reason() {
        assert_eq!(failure("no"), b"d14:failure reason2:noe");
    }
}
