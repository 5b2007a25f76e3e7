//! The local directory as a journal remote (tests and benchmarks journal onto it).

use super::*;

struct LocalAppender {
    file: File,
    path: PathBuf,
}

impl ObjectWriter for LocalAppender {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|e| io_err("append", &self.path, e))
    }
    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| io_err("fdatasync", &self.path, e))
    }
}

impl AppendBackend for LocalBackend {
    fn open_append(&self, name: &str) -> Result<(Box<dyn ObjectWriter>, u64)> {
        super::super::check_object_name(name)?;
        let path = self.dir().join(name);
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::NotFound(format!("object {}", path.display()))
            } else {
                io_err("open", &path, e)
            }
        })?;
        let len = file.metadata().map_err(|e| io_err("stat", &path, e))?.len();
        Ok((Box::new(LocalAppender { file, path }), len))
    }
}
