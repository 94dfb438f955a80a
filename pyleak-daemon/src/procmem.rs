//! Reading another process's memory, for symbolization and setup (never writing).
//!
//! Uses `process_vm_readv(2)`, which needs the same permission as ptrace attach
//! (root, CAP_SYS_PTRACE, or the same user under Yama scope 0). Nothing is stopped.
use std::io;

/// A read-only view of one process's address space.
#[derive(Clone, Copy, Debug)]
pub struct ProcMem {
    pid: u32,
}

impl ProcMem {
    pub fn new(pid: u32) -> ProcMem {
        ProcMem { pid }
    }

    /// Fills `buf` from `addr`; fails unless every byte was read.
    pub fn read_exact(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: both iovecs describe valid memory of the stated length (remote is checked
        // by the kernel).
        let n = unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read at {addr:#x} in pid {}: {n} of {} bytes", self.pid, buf.len()),
            ));
        }
        Ok(())
    }

    pub fn read_vec(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact(addr, &mut buf)?;
        Ok(buf)
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn read_i64(&self, addr: u64) -> io::Result<i64> {
        Ok(self.read_u64(addr)? as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let data: [u64; 2] = [0x1122_3344_5566_7788, 42];
        let mem = ProcMem::new(std::process::id());
        assert_eq!(mem.read_u64(data.as_ptr() as u64).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(mem.read_vec(&data[1] as *const u64 as u64, 1).unwrap(), [42]);
    }

    #[test]
    fn unmapped_address_is_an_error() {
        let mem = ProcMem::new(std::process::id());
        assert!(mem.read_u64(8).is_err());
    }
}
