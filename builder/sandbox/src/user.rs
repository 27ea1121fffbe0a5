//! Turns a step's `USER` value (`name`, `uid`, `name:group`, `uid:gid`) into
//! the ids, supplementary groups and home directory the command runs with,
//! reading the image's `/etc/passwd` and `/etc/group` text the way Docker
//! does. Pure: the caller reads the files (after `pivot_root`, so it reads the
//! image's, never the host's).

use super::SetupError;

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the groups of `/etc/group` listing the user.
    pub groups: Vec<u32>,
    /// `HOME` unless the step sets it.
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

pub(super) fn resolve(
    user: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<Identity, SetupError> {
    let spec = user.unwrap_or("").trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let unknown = |reason: String| SetupError::UnknownUser {
        user: spec.to_owned(),
        reason,
    };
    let entry = if user_part.is_empty() {
        passwd_entries(passwd).find(|e| e.uid == 0)
    } else if let Ok(uid) = user_part.parse::<u32>() {
        passwd_entries(passwd).find(|e| e.uid == uid)
    } else {
        Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| unknown(format!("no user {user_part:?} in /etc/passwd")))?,
        )
    };
    let uid = match (&entry, user_part.parse::<u32>()) {
        (_, Ok(uid)) => uid,
        (Some(e), Err(_)) => e.uid,
        (None, Err(_)) => 0,
    };
    let gid = match group_part {
        Some(g) if !g.is_empty() => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| unknown(format!("no group {g:?} in /etc/group")))?,
        },
        _ => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut groups: Vec<u32> = match &entry {
        Some(e) => group_entries(group)
            .filter(|(_, _, members)| members.split(',').any(|m| m.trim() == e.name))
            .map(|(_, gid, _)| gid)
            .collect(),
        None => Vec::new(),
    };
    groups.sort_unstable();
    groups.dedup();
    let home = match &entry {
        Some(e) if !e.home.is_empty() => e.home.to_owned(),
        _ if uid == 0 => "/root".to_owned(),
        _ => "/".to_owned(),
    };
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// `(name, gid, members)` per line of an `/etc/group` text.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, &str)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1001:App:/home/app:/bin/sh\n\
                          nohome:x:1002:1002:::/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,app\napp:x:1001:\nstaff:x:50:app\n";

    #[test]
    fn no_user_is_root_with_roots_home_and_groups() {
        let id = resolve(None, PASSWD, GROUP).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.groups, id.home.as_str()),
            (0, 0, vec![10], "/root")
        );
        let id = resolve(Some(""), "", "").unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn a_name_takes_ids_home_and_groups_from_the_image() {
        let id = resolve(Some("app"), PASSWD, GROUP).unwrap();
        assert_eq!(id.uid, 1000);
        assert_eq!(id.gid, 1001);
        assert_eq!(id.groups, vec![10, 50]);
        assert_eq!(id.home, "/home/app");
    }

    #[test]
    fn numeric_ids_need_no_entry_and_group_names_are_looked_up() {
        let id = resolve(Some("4242"), PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (4242, 0, "/"));
        let id = resolve(Some("1000:staff"), PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 50));
        let id = resolve(Some("app:7"), PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 7));
        let id = resolve(Some("nohome"), PASSWD, GROUP).unwrap();
        assert_eq!(id.home, "/");
    }

    #[test]
    fn unknown_names_are_errors_that_say_which_file() {
        let e = resolve(Some("ghost"), PASSWD, GROUP)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ghost") && e.contains("/etc/passwd"), "{e}");
        let e = resolve(Some("app:ghosts"), PASSWD, GROUP)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/group"), "{e}");
    }
}
