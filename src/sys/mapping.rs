//! Memory mappings of shared memory: `mmap` of a file descriptor, or `shmat` of a System V
//! segment. [`Mapping`] is the only owner of such an address range and unmaps it in `Drop`.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::{self, NonNull};

use super::cvt::{cvt, Errno, SysResult};
use super::futex::FutexWord;

/// A type that may live in memory other processes write: every bit pattern is a valid value
/// and every byte may change under a shared reference (atomics, `UnsafeCell`s), so
/// [`Mapping::shared`] can hand out `&T` into shared memory soundly.
///
/// # Safety
/// Implement it only for `#[repr(C)]` types made entirely of `CrossProcess` parts (atomics,
/// arrays of them, [`super::mutex::RawMutex`]) with no padding that Rust would assume
/// unchanged.
pub unsafe trait CrossProcess: Sync {}

// SAFETY: atomics are valid for every bit pattern and allow shared mutation.
unsafe impl CrossProcess for std::sync::atomic::AtomicU8 {}
// SAFETY: as above.
unsafe impl CrossProcess for std::sync::atomic::AtomicU32 {}
// SAFETY: as above.
unsafe impl CrossProcess for std::sync::atomic::AtomicU64 {}
// SAFETY: an array of `CrossProcess` values is one too (no padding between elements).
unsafe impl<T: CrossProcess, const N: usize> CrossProcess for [T; N] {}

/// Declares a `#[repr(C)]` struct for shared memory and implements [`CrossProcess`] for it,
/// after checking at compile time that every field is `CrossProcess` and that the struct has no
/// padding: then it is valid for every bit pattern and shared-mutable throughout, whatever
/// another process writes.
macro_rules! cross_process {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field_vis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        $vis struct $name {
            $($(#[$field_meta])* $field_vis $field: $ty),*
        }
        const _: () = {
            const fn is_cross_process<T: $crate::sys::mapping::CrossProcess>() {}
            $(is_cross_process::<$ty>();)*
            assert!(
                ::std::mem::size_of::<$name>() == 0 $(+ ::std::mem::size_of::<$ty>())*,
                "a cross-process struct has padding"
            );
        };
        // SAFETY: `#[repr(C)]`, every field `CrossProcess`, no padding (all checked above).
        #[allow(unsafe_code)]
        unsafe impl $crate::sys::mapping::CrossProcess for $name {}
    };
}
pub(crate) use cross_process;

/// How the range was mapped, which decides how it is unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Mmap,
    SysV,
}

/// A mapped range of shared memory, unmapped when dropped.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    origin: Origin,
    /// The slot of a file mapping in the `SIGBUS` watch table (see [`super::sigbus`]).
    watch: Option<usize>,
    /// How many bytes from the start `Drop` unmaps: `len`, unless the pages after that must
    /// stay mapped until the process exits (see [`Mapping::keep_mapped_from`]).
    unmap_len: usize,
}

// SAFETY: a `Mapping` is an address range that belongs to the whole process, not to a thread;
// the struct itself only hands out the raw pointer and never dereferences it without the
// caller's synchronisation, so moving it to or sharing it with another thread is sound.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`; every `&self` method is either a plain read of immutable fields or a copy
// through the pointer that the caller's protocol (the cross-process lock) orders.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ[|PROT_WRITE], MAP_SHARED, fd, offset)`.
    pub fn map_file(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> SysResult<Self> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EOVERFLOW)?;
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL, no MAP_FIXED) cannot alias
        // any Rust object; `fd` is a valid open descriptor for the duration of the call.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        // A file can shrink under a mapping; a watched mapping survives the access past its end.
        let watch = super::sigbus::register(ptr.as_ptr(), len, prot);
        Ok(Self {
            ptr,
            len,
            writable,
            origin: Origin::Mmap,
            watch,
            unmap_len: len,
        })
    }

    /// A private, writable, zero-filled anonymous mapping of `len` bytes: process-local memory
    /// with the same accessors as a shared mapping, for copies of shared data.
    pub fn anonymous(len: usize) -> SysResult<Self> {
        Self::anonymous_with(len, libc::MAP_PRIVATE)
    }

    /// A shared, writable, zero-filled anonymous mapping of `len` bytes: a stand-in for a
    /// segment in tests.
    #[cfg(test)]
    pub fn anonymous_shared(len: usize) -> SysResult<Self> {
        Self::anonymous_with(len, libc::MAP_SHARED)
    }

    /// A writable, zero-filled anonymous mapping of `len` bytes, `MAP_PRIVATE` or `MAP_SHARED`.
    fn anonymous_with(len: usize, sharing: libc::c_int) -> SysResult<Self> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a fresh anonymous mapping chosen by the kernel (addr NULL, no MAP_FIXED)
        // cannot alias any Rust object.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                sharing | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        // Anonymous memory cannot shrink: no need to watch it.
        Ok(Self {
            ptr,
            len,
            writable: true,
            origin: Origin::Mmap,
            watch: None,
            unmap_len: len,
        })
    }

    /// `shmat(shmid, NULL, writable ? 0 : SHM_RDONLY)`; `len` is the segment's `shm_segsz`.
    pub fn attach_sysv(shmid: i32, len: usize, writable: bool) -> SysResult<Self> {
        let flags = if writable { 0 } else { libc::SHM_RDONLY };
        // SAFETY: the kernel picks the address (NULL), so the new range cannot alias any Rust
        // object; a bad id is reported through the return value.
        let ptr = unsafe { libc::shmat(shmid, ptr::null(), flags) };
        if ptr as isize == -1 {
            return Err(Errno::last());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        // A System V segment cannot shrink: no need to watch it.
        Ok(Self {
            ptr,
            len,
            writable,
            origin: Origin::SysV,
            watch: None,
            unmap_len: len,
        })
    }

    /// The first byte of the range.
    #[must_use]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length of the range in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether pages of this mapping had to be replaced by private zero pages because the file
    /// behind them shrank (another process truncated it) or could not provide them (its file
    /// system ran full). The memory is then no longer shared with anyone.
    #[must_use]
    pub fn lost_pages(&self) -> bool {
        !super::sigbus::nothing_ever_lost() && self.watch.is_some_and(super::sigbus::lost_pages)
    }

    /// Leaves the pages from `offset` (rounded down to a page) to the end mapped when this
    /// mapping is dropped, until the process exits; the pages before it are unmapped as usual.
    /// The kept pages are no longer watched for `SIGBUS`: call this only for pages that can no
    /// longer fault, such as pages the handler replaced (see [`Self::lost_pages`]).
    ///
    /// For memory the C library may still write to after we are done with it: an entry of a
    /// thread's robust mutex list (see `Owned::keep_lost_control_page` in `segment.rs`).
    ///
    /// # Panics
    /// If `offset` is not inside the range, or the range is a System V attachment (which is
    /// detached whole).
    pub fn keep_mapped_from(&mut self, offset: usize) {
        assert!(offset < self.len, "kept offset out of range");
        assert!(
            self.origin == Origin::Mmap,
            "a System V attachment is detached whole"
        );
        self.unmap_len = offset & !(page_size() - 1);
    }

    /// Whether the range was mapped writable.
    #[must_use]
    #[cfg(test)]
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The value of type `T` at `offset`, for data shared with other processes: a
    /// [`CrossProcess`] type is made only of atomics and cells that other processes may change
    /// at any moment, so a shared reference to it is sound whatever they write.
    ///
    /// # Panics
    /// If `offset` is misaligned for `T` or `T` does not fit at `offset`, or the mapping is
    /// read-only (an atomic store to a read-only page would fault).
    #[must_use]
    pub fn shared<T: CrossProcess>(&self, offset: usize) -> &T {
        assert!(self.writable, "cross-process data in a read-only mapping");
        assert!(
            offset % std::mem::align_of::<T>() == 0
                && offset
                    .checked_add(std::mem::size_of::<T>())
                    .is_some_and(|end| end <= self.len),
            "cross-process data out of range or misaligned"
        );
        // SAFETY: the bytes at `offset` are inside the live, writable mapping and aligned for
        // `T` (checked above, the mapping itself is page-aligned); `T: CrossProcess` is valid
        // for every bit pattern and allows shared mutation through `&`, so whatever another
        // process writes there, the reference stays sound. It borrows `self`, so it cannot
        // outlive the mapping.
        unsafe { &*self.as_ptr().add(offset).cast::<T>() }
    }

    /// Checks that a `T`-sized, `T`-aligned value at `offset` lies inside the mapping.
    fn check_word<T>(&self, offset: usize) {
        assert!(
            offset % std::mem::align_of::<T>() == 0
                && offset
                    .checked_add(std::mem::size_of::<T>())
                    .is_some_and(|end| end <= self.len),
            "word out of range or misaligned"
        );
    }

    /// The 32-bit word at `offset`, for futex calls and atomic loads: also in a read-only
    /// mapping (the kernel and [`FutexWord::load`] only read it).
    ///
    /// # Panics
    /// If the word is misaligned or not inside the mapping.
    #[must_use]
    pub fn futex_word(&self, offset: usize) -> FutexWord<'_> {
        self.check_word::<u32>(offset);
        // SAFETY: inside the live mapping (checked above), so `ptr + offset` is not null.
        let addr = unsafe { NonNull::new_unchecked(self.as_ptr().add(offset).cast::<u32>()) };
        FutexWord::at(addr)
    }

    /// The 64-bit word at `offset`, loaded atomically with acquire ordering; also in a
    /// read-only mapping (a relaxed atomic load no wider than a pointer never writes, per Rust's
    /// rules for atomic accesses to read-only memory; the fence gives it acquire ordering).
    ///
    /// # Panics
    /// If the word is misaligned or not inside the mapping.
    #[must_use]
    pub fn load_u64(&self, offset: usize) -> u64 {
        self.check_word::<u64>(offset);
        // SAFETY: aligned and inside the live mapping (checked above); others may write it,
        // which is what an atomic is for.
        let cell = unsafe {
            std::sync::atomic::AtomicU64::from_ptr(self.as_ptr().add(offset).cast::<u64>())
        };
        let value = cell.load(std::sync::atomic::Ordering::Relaxed);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        value
    }

    /// Copies bytes out of the mapping one atomic load at a time: sound whatever other
    /// processes write meanwhile (the copy may then mix old and new bytes). For small reads
    /// without the lock (inspection tools).
    ///
    /// # Panics
    /// If the range is not inside the mapping.
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        let cells = self.atomic_bytes(offset, dst.len(), "read");
        for (byte, cell) in dst.iter_mut().zip(cells) {
            *byte = cell.load(std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Copies `src` into the mapping one atomic store at a time (tests only).
    ///
    /// # Panics
    /// If the mapping is read-only or the range is not inside it.
    #[cfg(test)]
    pub fn copy_in(&self, offset: usize, src: &[u8]) {
        assert!(self.writable, "write to a read-only mapping");
        for (byte, cell) in src
            .iter()
            .zip(self.atomic_bytes(offset, src.len(), "write"))
        {
            cell.store(*byte, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The bytes `offset..offset + len` of the mapping as atomics, for copies that other
    /// processes may race with (the copy may then mix old and new bytes).
    ///
    /// # Panics
    /// If the range is not inside the mapping (`what`: the access, for the message).
    fn atomic_bytes(
        &self,
        offset: usize,
        len: usize,
        what: &str,
    ) -> impl Iterator<Item = &std::sync::atomic::AtomicU8> + '_ {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "{what} out of range"
        );
        (offset..offset + len).map(move |at| {
            // SAFETY: the byte is inside the live mapping (checked above), which the reference
            // cannot outlive (it borrows `self`); an `AtomicU8` may alias memory others write,
            // and any bit pattern is a valid `u8`. Stores go only to a writable mapping (the
            // caller checks).
            unsafe { std::sync::atomic::AtomicU8::from_ptr(self.as_ptr().add(at)) }
        })
    }

    /// The bytes `offset..offset + len` as a shared slice.
    ///
    /// # Safety
    /// No other thread or process may write these bytes while the slice is alive. The crate
    /// calls this only while it holds the segment's cross-process lock (the documented protocol
    /// every writer follows).
    ///
    /// # Panics
    /// If the range is not inside the mapping.
    #[must_use]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "slice out of range"
        );
        // SAFETY: in range of the live mapping (checked above); the caller guarantees that
        // nobody writes the bytes while the shared borrow lasts.
        unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset), len) }
    }

    /// The bytes `offset..offset + len` as a mutable slice.
    ///
    /// # Safety
    /// Nobody else (no other slice, thread or process) may read or write these bytes while the
    /// slice is alive; the crate calls this only under the segment's cross-process lock and
    /// with an exclusive borrow of the lock guard.
    ///
    /// # Panics
    /// If the mapping is read-only or the range is not inside it.
    #[must_use]
    #[allow(clippy::mut_from_ref)] // the exclusivity comes from the lock, see # Safety
    pub unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(self.writable, "mutable slice of a read-only mapping");
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "slice out of range"
        );
        // SAFETY: in range of the live, writable mapping (checked above); the caller guarantees
        // exclusive access for the borrow's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr().add(offset), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unmapping can only fail for an invalid range, which would be a bug in this module;
        // there is nothing useful to do about it in a destructor, so the result is ignored
        // rather than panicking (a panic in drop could abort the process).
        if let Some(slot) = self.watch.take() {
            super::sigbus::unregister(slot);
        }
        match self.origin {
            // Nothing to unmap: everything stays (`keep_mapped_from(0)`).
            Origin::Mmap if self.unmap_len == 0 => {}
            Origin::Mmap => {
                // SAFETY: `ptr` is the start of the range `mmap` returned and `unmap_len` is at
                // most its length (all of it, or a page boundary set by `keep_mapped_from`), and
                // this is the only owner; no slice can outlive `self` because slices borrow it.
                // Pages past `unmap_len` are left mapped on purpose, owned by nobody from now on.
                let _ = cvt(unsafe {
                    libc::munmap(self.ptr.as_ptr().cast::<c_void>(), self.unmap_len)
                });
            }
            Origin::SysV => {
                // SAFETY: `ptr` is the address `shmat` returned and this is its only owner.
                let _ = cvt(unsafe { libc::shmdt(self.ptr.as_ptr().cast::<c_void>()) });
            }
        }
    }
}

/// The system page size.
#[must_use]
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    fn memfd(len: usize) -> OwnedFd {
        memfd_named(c"qsm-test", len)
    }

    fn memfd_named(name: &std::ffi::CStr, len: usize) -> OwnedFd {
        // SAFETY: memfd_create with a valid NUL-terminated name has no other preconditions.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: valid fd, plain integer argument.
        let ret = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
        assert_eq!(ret, 0);
        fd
    }

    #[test]
    fn two_mappings_of_one_file_share_bytes() {
        let fd = memfd(4096);
        let a = Mapping::map_file(std::os::fd::AsFd::as_fd(&fd), 0, 4096, true).unwrap();
        let b = Mapping::map_file(std::os::fd::AsFd::as_fd(&fd), 0, 4096, false).unwrap();
        a.copy_in(10, b"hello");
        let mut out = [0u8; 5];
        b.copy_out(10, &mut out);
        assert_eq!(&out, b"hello");
        assert!(!b.is_writable());
    }

    #[test]
    #[should_panic(expected = "read-only")]
    fn writing_a_read_only_mapping_panics_instead_of_faulting() {
        let fd = memfd(4096);
        let m = Mapping::map_file(std::os::fd::AsFd::as_fd(&fd), 0, 4096, false).unwrap();
        m.copy_in(0, b"x");
    }

    #[test]
    fn access_past_a_truncated_end_reads_zeros_instead_of_killing_the_process() {
        let page = page_size();
        let fd = memfd(3 * page);
        let m = Mapping::map_file(std::os::fd::AsFd::as_fd(&fd), 0, 3 * page, true).unwrap();
        m.copy_in(0, b"kept");
        m.copy_in(2 * page, b"lost");
        assert!(!m.lost_pages());
        // SAFETY: valid fd, plain integer argument: another "process" shrinks the file.
        let ret = unsafe { libc::ftruncate(fd.as_raw_fd(), page as libc::off_t) };
        assert_eq!(ret, 0);
        let mut out = [0xffu8; 4];
        m.copy_out(2 * page, &mut out);
        assert_eq!(out, [0; 4], "the page past the end is a zero page now");
        assert!(m.lost_pages());
        m.copy_in(3 * page - 4, b"ok!!");
        m.copy_out(0, &mut out);
        assert_eq!(
            &out, b"kept",
            "the part inside the file is still the file's"
        );
    }

    /// The address ranges of this process that map the memfd called `name`.
    fn ranges_of(name: &str) -> Vec<(usize, usize)> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let file = format!("/memfd:{name} ");
        maps.lines()
            .filter(|line| line.contains(&file))
            .map(|line| {
                let range = line.split_whitespace().next().unwrap();
                let (start, end) = range.split_once('-').unwrap();
                let hex = |x| usize::from_str_radix(x, 16).unwrap();
                (hex(start), hex(end))
            })
            .collect()
    }

    #[test]
    fn kept_pages_stay_mapped_after_drop_and_the_rest_goes() {
        let page = page_size();
        // A name of its own: other tests of this binary map memfds concurrently.
        let fd = memfd_named(c"qsm-keep-test", 3 * page);
        let mut m = Mapping::map_file(std::os::fd::AsFd::as_fd(&fd), 0, 3 * page, true).unwrap();
        let base = m.as_ptr() as usize;
        assert_eq!(ranges_of("qsm-keep-test"), [(base, base + 3 * page)]);
        m.copy_in(2 * page, b"kept");
        m.keep_mapped_from(2 * page + 100); // rounded down to the page
        drop(m);
        let kept = base + 2 * page;
        assert_eq!(ranges_of("qsm-keep-test"), [(kept, kept + page)]);
        let mut out = [0u8; 4];
        // SAFETY: the page at `kept` is still mapped (checked above) and nobody else uses it.
        unsafe { ptr::copy_nonoverlapping(kept as *const u8, out.as_mut_ptr(), 4) };
        assert_eq!(&out, b"kept");
        // SAFETY: the kept page belongs to nobody now; this test gives it back.
        assert_eq!(unsafe { libc::munmap(kept as *mut c_void, page) }, 0);
    }

    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two());
    }
}
