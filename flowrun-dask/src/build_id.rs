//! Which build of the program this is: the ELF build-id note the linker
//! writes (a hash of the linked binary), or a hash of the executable when
//! there is no note. A worker and its flow must be the same build before
//! any task moves between them.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use flowrun_core::plumbing::hex;

/// The build id of the running program.
pub(crate) fn current() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| match std::env::current_exe() {
        Ok(exe) => of_file(&exe).unwrap_or_else(|e| format!("unknown ({e})")),
        Err(e) => format!("unknown ({e})"),
    })
}

/// The build id of the program at `path`.
pub(crate) fn of_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut head = vec![0u8; 64 * 1024];
    let n = read_up_to(&mut file, &mut head)?;
    head.truncate(n);
    if let Some(id) = elf_build_id(path, &head)? {
        return Ok(format!("gnu-{}", hex(&id)));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon_free(path)?;
    Ok(format!("b3-{}", hasher.finalize().to_hex()))
}

trait HashFile {
    fn update_mmap_rayon_free(&mut self, path: &Path) -> std::io::Result<()>;
}

impl HashFile for blake3::Hasher {
    fn update_mmap_rayon_free(&mut self, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.update(&buf[..n]);
        }
    }
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = f.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The NT_GNU_BUILD_ID of a little-endian ELF64 file, from its PT_NOTE
/// segments.
fn elf_build_id(path: &Path, head: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return Ok(None);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (u64_at(head, 32), u16_at(head, 54), u16_at(head, 56))
    else {
        return Ok(None);
    };
    let table = phoff as usize..phoff as usize + phentsize as usize * phnum as usize;
    let file_bytes;
    let bytes: &[u8] = if table.end <= head.len() {
        head
    } else {
        file_bytes = std::fs::read(path)?;
        &file_bytes
    };
    for i in 0..phnum as usize {
        let ph = phoff as usize + i * phentsize as usize;
        if u32_at(bytes, ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (u64_at(bytes, ph + 8), u64_at(bytes, ph + 32)) else {
            continue;
        };
        let seg = off as usize..(off + size) as usize;
        let owned;
        let notes: &[u8] = match bytes.get(seg.clone()) {
            Some(s) => s,
            None => {
                owned = std::fs::read(path)?;
                match owned.get(seg) {
                    Some(s) => s,
                    None => continue,
                }
            }
        };
        let mut p = 0;
        while p + 12 <= notes.len() {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(notes, p), u32_at(notes, p + 4), u32_at(notes, p + 8))
            else {
                break;
            };
            let name_start = p + 12;
            let desc_start = name_start + (namesz as usize).div_ceil(4) * 4;
            let desc_end = desc_start + descsz as usize;
            if desc_end > notes.len() {
                break;
            }
            if kind == 3 && notes.get(name_start..name_start + namesz as usize) == Some(b"GNU\0") {
                return Ok(Some(notes[desc_start..desc_end].to_vec()));
            }
            p = desc_start + (descsz as usize).div_ceil(4) * 4;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_test_binary_has_a_stable_build_id() {
        let id = current();
        assert!(id.starts_with("gnu-") || id.starts_with("b3-"), "{id}");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(of_file(&exe).unwrap(), id);
    }

    #[test]
    fn a_non_elf_file_falls_back_to_a_content_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("script");
        std::fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
        let a = of_file(&p).unwrap();
        assert!(a.starts_with("b3-"));
        std::fs::write(&p, b"#!/bin/sh\necho ho\n").unwrap();
        assert_ne!(a, of_file(&p).unwrap());
    }
}
