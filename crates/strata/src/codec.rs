//! Payload codecs. A payload is JSON (readable, and what the API speaks) or binary
//! (MessagePack with field names, smaller and cheaper to decode). Each stored payload says
//! which it is in its first byte: a JSON payload is an object and starts with `{` (or
//! whitespace), a binary one starts with [`BINARY_TAG`], a byte no JSON text can start with.
//! So one store can hold both, switching the codec of new events is safe, and no store,
//! parked-event table or export format needed a new column.
//!
//! Both are self-describing, so an older version's payload can be turned into a JSON value
//! for upcasting and for showing, whatever its codec.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of a binary payload.
pub const BINARY_TAG: u8 = 0;

/// How new payloads are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// JSON text: readable in any tool.
    #[default]
    Json,
    /// [`BINARY_TAG`] then MessagePack, fields by name.
    Binary,
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// JSON refused it.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// MessagePack refused to write it.
    #[error("binary encoding failed: {0}")]
    BinaryEncode(#[from] rmp_serde::encode::Error),
    /// MessagePack refused to read it.
    #[error("binary payload does not decode: {0}")]
    BinaryDecode(#[from] rmp_serde::decode::Error),
}

impl Codec {
    /// Whether this is [`Codec::Json`]; for `skip_serializing_if`.
    pub fn is_json(&self) -> bool {
        *self == Codec::Json
    }

    /// The codec `payload` was written with.
    pub fn of(payload: &[u8]) -> Codec {
        if payload.first() == Some(&BINARY_TAG) { Codec::Binary } else { Codec::Json }
    }

    /// Encodes `value`.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::Json => Ok(serde_json::to_vec(value)?),
            Codec::Binary => {
                let mut bytes = vec![BINARY_TAG];
                rmp_serde::encode::write_named(&mut bytes, value)?;
                Ok(bytes)
            }
        }
    }
}

/// Decodes a payload of either codec.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    match Codec::of(payload) {
        Codec::Json => Ok(serde_json::from_slice(payload)?),
        Codec::Binary => Ok(rmp_serde::from_slice(&payload[1..])?),
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Json => "json",
            Codec::Binary => "binary",
        })
    }
}

impl FromStr for Codec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "json" => Ok(Codec::Json),
            "binary" => Ok(Codec::Binary),
            other => Err(format!("unknown codec {other:?}; expected json or binary")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn each_payload_says_its_codec_and_decodes_to_the_same_value() {
        let value =
            json!({"customer_id": "ada", "lines": [{"sku": "tea", "qty": 2}], "note": null});
        for codec in [Codec::Json, Codec::Binary] {
            let bytes = codec.encode(&value).unwrap();
            assert_eq!(Codec::of(&bytes), codec);
            assert_eq!(decode::<Value>(&bytes).unwrap(), value, "{codec}");
        }
        assert!(
            Codec::Binary.encode(&value).unwrap().len() < Codec::Json.encode(&value).unwrap().len()
        );
        assert_eq!("binary".parse::<Codec>(), Ok(Codec::Binary));
        assert!("xml".parse::<Codec>().is_err());
    }
}
