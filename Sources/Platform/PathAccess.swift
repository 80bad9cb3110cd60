#if canImport(Glibc)
import Glibc
#endif

/// Why a path could not be opened, in words an operator can act on. `EACCES` alone does not say
/// whether the file or a directory on the way to it is closed to this process: the classic case
/// is a config in `/etc/tibet-twin` (mode 0750, another group) that the service user cannot
/// even traverse.
public enum PathAccess {
    /// The first directory on the way to `path` this process may not search (`access(X_OK)`,
    /// real ids), or nil when every one of them is searchable.
    public static func unsearchableDirectory(on path: String) -> String? {
        var parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard !parts.isEmpty else { return nil }
        parts.removeLast()
        var dir = path.hasPrefix("/") ? "" : "."
        if path.hasPrefix("/"), access("/", X_OK) != 0 { return "/" }
        for p in parts {
            dir += "/" + p
            let shown = path.hasPrefix("/") ? dir : String(dir.dropFirst(2))
            if access(dir, X_OK) != 0 { return shown }
        }
        return nil
    }

    /// For `EACCES` and `EPERM`: `uid 999 may not search /etc/tibet-twin` (or `… may not open
    /// it` when every directory on the way is searchable); nil for every other errno.
    public static func blockage(_ e: Errno, path: String) -> String? {
        guard e.rawValue == EACCES || e.rawValue == EPERM else { return nil }
        let who = "uid \(getuid())"
        if let dir = unsearchableDirectory(on: path) { return "\(who) may not search \(dir)" }
        return "\(who) may not open it"
    }

    /// `blockage` in parentheses after a space, or empty.
    public static func hint(_ e: Errno, path: String) -> String {
        blockage(e, path: path).map { " (\($0))" } ?? ""
    }

    /// `EACCES: permission denied (uid 999 may not search /etc/tibet-twin)`: the errno's name,
    /// its meaning, and for a permission error where it lies. For `file:line:col: key: …` lines.
    public static func explain(_ e: Errno, path: String) -> String {
        e.colonForm + hint(e, path: path)
    }
}
