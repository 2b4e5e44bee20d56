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
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
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
