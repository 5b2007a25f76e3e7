//! The system's user and group databases (getpwuid_r, getgrouplist, getgrnam_r): who a caller
//! is, for the socket rule (group `hlfs`), opening files with the caller's rights, and the NBD
//! socket's group.

use std::ffi::{CStr, CString};

/// A user's entry: its login name and primary group.
struct Passwd {
    name: CString,
    gid: u32,
}

/// The entry of `uid` in the user database.
fn passwd(uid: u32) -> Option<Passwd> {
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwuid_r writes only into pw and buf.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points to a C string inside buf, alive here.
    let name = unsafe { CStr::from_ptr(pw.pw_name) }.to_owned();
    Some(Passwd {
        name,
        gid: pw.pw_gid,
    })
}

/// Login name of `uid`.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    passwd(uid).map(|p| p.name.to_string_lossy().into_owned())
}

/// `[primary, supplementary...]` of `uid` from the user and group databases.
pub(crate) fn user_groups(uid: u32) -> Option<Vec<u32>> {
    let pw = passwd(uid)?;
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: name is a live C string; groups has room for n entries.
    let rc = unsafe { libc::getgrouplist(pw.name.as_ptr(), pw.gid, groups.as_mut_ptr(), &mut n) };
    if rc < 0 {
        return Some(vec![pw.gid]);
    }
    groups.truncate(usize::try_from(n).unwrap_or(0));
    let mut all = vec![pw.gid];
    all.extend(groups.into_iter().filter(|g| *g != pw.gid));
    Some(all)
}

/// `(gid, member names)` of group `name` from the system's group database.
pub(crate) fn group_info(name: &str) -> Option<(u32, Vec<String>)> {
    let cname = CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrnam_r writes only into grp and buf.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return None;
    }
    let mut members = Vec::new();
    let mut p = grp.gr_mem;
    // SAFETY: gr_mem is a NULL-terminated array of C strings inside buf.
    unsafe {
        while !p.is_null() && !(*p).is_null() {
            members.push(CStr::from_ptr(*p).to_string_lossy().into_owned());
            p = p.add(1);
        }
    }
    Some((grp.gr_gid, members))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_in_both_databases() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_groups(0).and_then(|g| g.first().copied()), Some(0));
        assert_eq!(group_info("root").map(|g| g.0), Some(0));
        assert!(group_info("no-such-group-hlfs").is_none());
        assert!(group_info("bad\0name").is_none());
    }
}
