//! Splits a kind/payload message into its kind and its payload's JSON text
//! while serialising it, so that the payload is written once and never
//! parsed back.
//!
//! serde writes an adjacently tagged enum as a struct of two fields, `kind`
//! (the variant's name, as a unit variant) and `payload` (absent for a unit
//! variant). [`split`] is a serializer that accepts exactly that shape.

use serde::ser::{self, Impossible, Serialize, SerializeStruct, Serializer};
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotTagged(String);

impl ser::Error for NotTagged {
    fn custom<T: std::fmt::Display>(message: T) -> Self {
        Self(message.to_string())
    }
}

impl From<serde_json::Error> for NotTagged {
    fn from(error: serde_json::Error) -> Self {
        Self(error.to_string())
    }
}

/// The kind and the payload (`None` for a unit variant) of `message`.
pub fn split<M: Serialize + ?Sized>(
    message: &M,
) -> Result<(String, Option<Box<RawValue>>), NotTagged> {
    let mut parts = Parts::default();
    message.serialize(&mut parts)?;
    let kind = parts
        .kind
        .ok_or_else(|| NotTagged("not a kind/payload enum: no kind".into()))?;
    Ok((kind, parts.payload))
}

#[derive(Default)]
struct Parts {
    kind: Option<String>,
    payload: Option<Box<RawValue>>,
}

fn not_tagged<T>() -> Result<T, NotTagged> {
    Err(NotTagged("not a kind/payload enum".into()))
}

impl SerializeStruct for &mut Parts {
    type Ok = ();
    type Error = NotTagged;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), NotTagged> {
        match key {
            "kind" => self.kind = Some(value.serialize(VariantName)?),
            "payload" => self.payload = Some(serde_json::value::to_raw_value(value)?),
            other => return Err(NotTagged(format!("unexpected field `{other}`"))),
        }
        Ok(())
    }

    fn end(self) -> Result<(), NotTagged> {
        Ok(())
    }
}

/// Generates the serializer methods that refuse anything but the expected shape.
macro_rules! refuse {
    ($($method:ident($($arg:ty),*) -> $ok:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ok, NotTagged> {
            not_tagged()
        })*
    };
}

macro_rules! refuse_all_but_structs_and_strings {
    () => {
        refuse! {
            serialize_bool(bool) -> Self::Ok;
            serialize_i8(i8) -> Self::Ok;
            serialize_i16(i16) -> Self::Ok;
            serialize_i32(i32) -> Self::Ok;
            serialize_i64(i64) -> Self::Ok;
            serialize_u8(u8) -> Self::Ok;
            serialize_u16(u16) -> Self::Ok;
            serialize_u32(u32) -> Self::Ok;
            serialize_u64(u64) -> Self::Ok;
            serialize_f32(f32) -> Self::Ok;
            serialize_f64(f64) -> Self::Ok;
            serialize_char(char) -> Self::Ok;
            serialize_bytes(&[u8]) -> Self::Ok;
            serialize_none() -> Self::Ok;
            serialize_unit() -> Self::Ok;
            serialize_unit_struct(&'static str) -> Self::Ok;
            serialize_seq(Option<usize>) -> Self::SerializeSeq;
            serialize_tuple(usize) -> Self::SerializeTuple;
            serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
            serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
            serialize_map(Option<usize>) -> Self::SerializeMap;
            serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
        }

        fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Self::Ok, NotTagged> {
            not_tagged()
        }

        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<Self::Ok, NotTagged> {
            not_tagged()
        }

        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Self::Ok, NotTagged> {
            not_tagged()
        }
    };
}

impl<'a> Serializer for &'a mut Parts {
    type Ok = ();
    type Error = NotTagged;
    type SerializeSeq = Impossible<(), NotTagged>;
    type SerializeTuple = Impossible<(), NotTagged>;
    type SerializeTupleStruct = Impossible<(), NotTagged>;
    type SerializeTupleVariant = Impossible<(), NotTagged>;
    type SerializeMap = Impossible<(), NotTagged>;
    type SerializeStruct = &'a mut Parts;
    type SerializeStructVariant = Impossible<(), NotTagged>;

    refuse_all_but_structs_and_strings!();

    fn serialize_str(self, _: &str) -> Result<(), NotTagged> {
        not_tagged()
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NotTagged> {
        not_tagged()
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, NotTagged> {
        Ok(self)
    }
}

/// Reads the name of the variant that serde writes as a message's `kind`.
struct VariantName;

impl Serializer for VariantName {
    type Ok = String;
    type Error = NotTagged;
    type SerializeSeq = Impossible<String, NotTagged>;
    type SerializeTuple = Impossible<String, NotTagged>;
    type SerializeTupleStruct = Impossible<String, NotTagged>;
    type SerializeTupleVariant = Impossible<String, NotTagged>;
    type SerializeMap = Impossible<String, NotTagged>;
    type SerializeStruct = Impossible<String, NotTagged>;
    type SerializeStructVariant = Impossible<String, NotTagged>;

    refuse_all_but_structs_and_strings!();

    fn serialize_str(self, name: &str) -> Result<String, NotTagged> {
        Ok(name.to_owned())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
    ) -> Result<String, NotTagged> {
        Ok(name.to_owned())
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, NotTagged> {
        not_tagged()
    }
}
