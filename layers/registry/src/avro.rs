//! Compiled Avro datum readers, kept per writer schema id (and reader
//! schema) so that a cached id costs no schema resolution per record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;

/// The writer schema and the optional reader schema a datum reader
/// borrows.
pub(crate) struct Schemas {
    writer: Arc<Schema>,
    reader: Option<Arc<Schema>>,
}

type DatumReader<'a> = GenericDatumReader<'a>;

self_cell::self_cell!(
    /// A datum reader together with the schemas it borrows.
    pub(crate) struct CompiledReader {
        owner: Schemas,
        #[covariant]
        dependent: DatumReader,
    }
);

impl CompiledReader {
    pub(crate) fn compile(
        writer: Arc<Schema>,
        reader: Option<Arc<Schema>>,
    ) -> Result<CompiledReader, apache_avro::Error> {
        CompiledReader::try_new(Schemas { writer, reader }, |s| {
            GenericDatumReader::builder(&s.writer)
                .maybe_reader_schema(s.reader.as_deref())
                .build()
        })
    }

    /// Decodes one datum from the front of `body`; the value and how many
    /// bytes were left after it.
    pub(crate) fn read(
        &self,
        body: &[u8],
    ) -> Result<(apache_avro::types::Value, usize), apache_avro::Error> {
        let mut rest = body;
        let value = self.borrow_dependent().read_value(&mut rest)?;
        Ok((value, rest.len()))
    }
}

/// Readers per writer schema id, for one reader schema (or none).
#[derive(Default)]
pub(crate) struct ReaderCache {
    readers: Mutex<HashMap<u32, Arc<CompiledReader>, foldhash::fast::RandomState>>,
}

/// More ids than any topic uses; beyond it readers are built per record
/// rather than kept.
const MAX_CACHED: usize = 1024;

impl ReaderCache {
    pub(crate) fn get(
        &self,
        id: u32,
        writer: &Arc<Schema>,
        reader: Option<&Arc<Schema>>,
    ) -> Result<Arc<CompiledReader>, apache_avro::Error> {
        let mut readers = crate::lock(&self.readers);
        if let Some(r) = readers.get(&id) {
            return Ok(r.clone());
        }
        let compiled = Arc::new(CompiledReader::compile(writer.clone(), reader.cloned())?);
        if readers.len() < MAX_CACHED {
            readers.insert(id, compiled.clone());
        }
        Ok(compiled)
    }
}

/// How many values a pre-scan visits at most: past it the record is
/// refused (a few bytes can declare an array of billions of nulls).
const MAX_SCAN_STEPS: usize = 4 << 20;

/// Measures, without recursion, how deep the data of `schema` in `body`
/// nests — records, unions, arrays and maps — failing as soon as it passes
/// `max_depth`, before the (recursive) decoder sees it. For recursive
/// schemas only: the depth of other schemas' data is their own.
pub(crate) fn check_depth(schema: &Schema, body: &[u8], max_depth: usize) -> Result<(), String> {
    use apache_avro::schema::{InnerDecimalSchema, UuidSchema};
    use apache_avro::Schema as S;
    enum Work<'s> {
        Value(&'s Schema, usize),
        Items {
            item: &'s Schema,
            left: u64,
            map: bool,
            depth: usize,
        },
    }
    let resolved = apache_avro::schema::ResolvedSchema::try_from(schema)
        .map_err(|e| crate::layer::avro_message(&e))?;
    let names = resolved.get_names();
    let mut at = 0usize;
    let truncated = || "the body ends inside the datum".to_owned();
    let long = |at: &mut usize| -> Result<i64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *body.get(*at).ok_or_else(truncated)?;
            *at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err("a varint longer than 10 bytes".into())
    };
    let skip = |at: &mut usize, n: usize| -> Result<(), String> {
        *at = at
            .checked_add(n)
            .filter(|e| *e <= body.len())
            .ok_or_else(truncated)?;
        Ok(())
    };
    let mut stack = vec![Work::Value(schema, 1)];
    let mut steps = 0usize;
    while let Some(work) = stack.pop() {
        steps += 1;
        if steps > MAX_SCAN_STEPS {
            return Err(format!("more than {MAX_SCAN_STEPS} values"));
        }
        let (s, depth) = match work {
            Work::Value(s, depth) => (s, depth),
            Work::Items {
                item,
                mut left,
                map,
                depth,
            } => {
                if left == 0 {
                    let n = long(&mut at)?;
                    if n == 0 {
                        continue;
                    }
                    if n < 0 {
                        long(&mut at)?; // the block's size in bytes
                    }
                    left = n.unsigned_abs();
                }
                stack.push(Work::Items {
                    item,
                    left: left - 1,
                    map,
                    depth,
                });
                if map {
                    let len = long(&mut at)?;
                    skip(
                        &mut at,
                        usize::try_from(len).map_err(|_| "a negative length")?,
                    )?;
                }
                (item, depth)
            }
        };
        if depth > max_depth {
            return Err(format!(
                "the value nests more than {max_depth} levels deep (max_depth)"
            ));
        }
        match s {
            S::Null => {}
            S::Boolean => skip(&mut at, 1)?,
            S::Int
            | S::Long
            | S::Enum(_)
            | S::Date
            | S::TimeMillis
            | S::TimeMicros
            | S::TimestampMillis
            | S::TimestampMicros
            | S::TimestampNanos
            | S::LocalTimestampMillis
            | S::LocalTimestampMicros
            | S::LocalTimestampNanos => {
                long(&mut at)?;
            }
            S::Float => skip(&mut at, 4)?,
            S::Double => skip(&mut at, 8)?,
            S::Bytes
            | S::String
            | S::BigDecimal
            | S::Uuid(UuidSchema::String | UuidSchema::Bytes)
            | S::Decimal(apache_avro::schema::DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => {
                let len = long(&mut at)?;
                skip(
                    &mut at,
                    usize::try_from(len).map_err(|_| "a negative length")?,
                )?;
            }
            S::Fixed(f) | S::Duration(f) | S::Uuid(UuidSchema::Fixed(f)) => skip(&mut at, f.size)?,
            S::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Fixed(f) => skip(&mut at, f.size)?,
                InnerDecimalSchema::Bytes => unreachable!("matched above"),
            },
            S::Record(r) => {
                for f in r.fields.iter().rev() {
                    stack.push(Work::Value(&f.schema, depth + 1));
                }
            }
            S::Union(u) => {
                let index = long(&mut at)?;
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("union branch {index} does not exist"))?;
                stack.push(Work::Value(variant, depth + 1));
            }
            S::Array(a) => stack.push(Work::Items {
                item: &a.items,
                left: 0,
                map: false,
                depth: depth + 1,
            }),
            S::Map(m) => stack.push(Work::Items {
                item: &m.types,
                left: 0,
                map: true,
                depth: depth + 1,
            }),
            S::Ref { name } => {
                let named = names
                    .get(name)
                    .ok_or_else(|| format!("unknown type {}", name.fullname(None)))?;
                stack.push(Work::Value(named, depth));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"type":"record","name":"Node","fields":[
        {"name":"next","type":["null","Node"]}]}"#;

    fn list(depth: usize) -> Vec<u8> {
        let mut body = vec![2u8; depth - 1];
        body.push(0);
        body
    }

    #[test]
    fn depth_is_measured_without_recursion() {
        let schema = Schema::parse_str(LIST).unwrap();
        let compiled =
            crate::schema::RegisteredSchema::compile(1, crate::SchemaType::Avro, LIST).unwrap();
        assert!(compiled.recursive);
        assert_eq!(check_depth(&schema, &list(10), 128), Ok(()));
        // Two levels (a record, a union) per node, and the null at the end.
        assert_eq!(check_depth(&schema, &list(63), 128), Ok(()));
        assert!(check_depth(&schema, &list(64), 128).is_err());
        assert!(check_depth(&schema, &list(1_000_000), 128)
            .unwrap_err()
            .contains("levels deep"));
    }
}
