//! Replay at open: every journal entry goes to the remote again, idempotently (the remote
//! object's length says what is already there), from where the `progress` record says.

use super::*;

impl Inner {
    /// Replays every journal file to the remote; returns the number for the next file.
    pub(super) fn replay(&self) -> Result<u64> {
        let mut nums = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, e))?;
        for e in rd {
            let e = e.map_err(|e| io_err("list", &self.dir, e))?;
            if let Some(n) = e.file_name().to_str().and_then(parse_journal_name) {
                nums.push(n);
            }
        }
        nums.sort_unstable();
        let next = nums.last().map_or(1, |n| n + 1);
        if nums.is_empty() {
            return Ok(next);
        }
        let start = self.read_progress()?;
        let t0 = Instant::now();
        let mut items = 0usize;
        let mut bytes = 0u64;
        for (i, &n) in nums.iter().enumerate() {
            let path = self.file_path(n);
            let mut f = OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(|e| io_err("open journal", &path, e))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| io_err("read journal", &path, e))?;
            let file = Arc::new(f);
            let mut at = 0usize;
            let mut st = self.lock();
            while at < buf.len() {
                let Some(e) = decode_entry(&buf, at) else {
                    if i + 1 < nums.len() {
                        return Err(Error::corrupt(
                            self.remote.location(),
                            path.display().to_string(),
                            at as u64,
                            "journal entry damaged before the last journal file",
                        ));
                    }
                    tracing::info!(journal = %path.display(), offset = at, dropped = buf.len() - at, "torn journal tail cut at replay");
                    break;
                };
                let pos = (n, at as u64);
                at += e.total as usize;
                if pos < start {
                    continue;
                }
                let id = 0;
                let item = match e.kind {
                    KIND_CREATE => Item::Create { name: e.name, id },
                    KIND_APPEND => {
                        bytes += e.data_len;
                        Item::Append {
                            name: e.name,
                            id,
                            off: e.off,
                            data: Chunk {
                                file: file.clone(),
                                file_off: e.data_off,
                                len: e.data_len,
                            },
                        }
                    }
                    _ => Item::Delete {
                        name: e.name,
                        at: pos,
                    },
                };
                st.queue.push_back(item);
                items += 1;
            }
            st.queue.push_back(Item::Rotate { file_no: n });
            st.files.insert(
                n,
                JournalFile {
                    file,
                    size: buf.len() as u64,
                },
            );
        }
        // Upload it all, here and now, retrying while the remote fails.
        let deadline = Instant::now() + self.opts.replay_timeout;
        let mut up = Uploader::default();
        loop {
            match self.step(&mut up) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    up.reset(self);
                    if Instant::now() >= deadline {
                        return Err(Error::io(
                            "replay journal to",
                            self.remote.location(),
                            std::io::Error::other(format!(
                                "{e} (journal {} kept for the next open)",
                                self.dir.display()
                            )),
                        ));
                    }
                    tracing::warn!(error = %e, "journal replay: upload failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        let _ = fs::remove_file(self.dir.join(PROGRESS));
        sync_dir(&self.dir)?;
        tracing::info!(remote = %self.remote.location(), items, bytes, elapsed = ?t0.elapsed(), "journal replayed");
        let mut st = self.lock();
        st.files.clear();
        st.journal_bytes = 0;
        st.last_error = None;
        Ok(next)
    }

    pub(super) fn read_progress(&self) -> Result<(u64, u64)> {
        let path = self.dir.join(PROGRESS);
        match fs::read(&path) {
            Ok(b) if b.len() == 20 => {
                let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
                if crc32c::crc32c(&b[..16]) != crc {
                    return Err(Error::corrupt(
                        self.remote.location(),
                        path.display().to_string(),
                        0,
                        "journal progress record damaged",
                    ));
                }
                let mut x = [0u8; 8];
                x.copy_from_slice(&b[..8]);
                let f = u64::from_le_bytes(x);
                x.copy_from_slice(&b[8..16]);
                Ok((f, u64::from_le_bytes(x)))
            }
            Ok(_) => Err(Error::corrupt(
                self.remote.location(),
                path.display().to_string(),
                0,
                "journal progress record has the wrong size",
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok((0, 0)),
            Err(e) => Err(io_err("read", &path, e)),
        }
    }

    pub(super) fn write_progress(&self, pos: (u64, u64)) -> Result<()> {
        let mut b = Vec::with_capacity(20);
        b.extend_from_slice(&pos.0.to_le_bytes());
        b.extend_from_slice(&pos.1.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join("progress.tmp");
        let path = self.dir.join(PROGRESS);
        let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(&b)
            .and_then(|()| f.sync_data())
            .map_err(|e| io_err("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err("rename", &path, e))?;
        sync_dir(&self.dir)
    }
}
