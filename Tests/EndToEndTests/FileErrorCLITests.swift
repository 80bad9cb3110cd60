import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// EACCES for real: the config, a maps directory and the audit key behind a directory the
/// process may not search, as in an install where /etc/tibet-twin is root:root 0750 and the
/// service user is not in its group. Permissions do not bind root, so when the tests run as
/// root the binary runs as nobody (uid 65534) through setpriv; otherwise as the test's user.
@Suite("EACCES names the path and the directory that blocks it")
struct FileErrorCLITests {
    /// The command prefix that runs the binary without root's privileges.
    var unprivileged: [String] {
        getuid() == 0 ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []
    }

    /// Runs `tibet-twin ARGS` unprivileged: (exit code, stderr).
    func run(_ args: [String]) throws -> (Int32, String) {
        let cmd = unprivileged + [binaryURL().path] + args
        return try runTool(cmd[0], Array(cmd.dropFirst()))
    }

    /// A world-traversable temp dir with `closed/` (mode 0700, owned by the test's user)
    /// holding a config, a map folder and a key.
    func setUp() throws -> (TempDir, String) {
        let dir = try TempDir("tibet-eacces")
        chmod(dir.path, 0o755)
        try dir.write("closed/maps/crane.yaml", rigMapYAML(port: closedPort()))
        try dir.write("closed/guard.key", "x")
        try dir.write("open/maps/crane.yaml", rigMapYAML(port: closedPort()))
        chmod(dir.path + "/open", 0o755)
        chmod(dir.path + "/open/maps", 0o755)
        chmod(dir.path + "/open/maps/crane.yaml", 0o644)
        chmod(dir.path + "/closed", 0o700)
        return (dir, dir.path + "/closed")
    }

    @Test(.enabled(if: getuid() != 0 || FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"),
                   "runs as root without setpriv to drop privileges"))
    func untraversableDirectoryIsEACCESNotENOENT() throws {
        let (dir, closed) = try setUp()
        defer { dir.cleanup() }
        let uid = getuid() == 0 ? 65534 : Int(getuid())

        // The config itself.
        let (c1, e1) = try run(["run", "--config", closed + "/tibet-twin.yaml"])
        #expect(c1 == 2)
        #expect(e1.contains("\(closed)/tibet-twin.yaml: cannot read the config file: EACCES: permission denied (uid \(uid) may not search \(closed))"), "\(e1)")
        #expect(!e1.contains("no such"), "\(e1)")

        // A maps folder behind it.
        let (c2, e2) = try run(["maps", "validate", closed + "/maps"])
        #expect(c2 != 0)
        #expect(e2.contains("\(closed)/maps:1:1: EACCES: permission denied (uid \(uid) may not search \(closed))"), "\(e2)")

        // The audit key behind it, from a config that is readable.
        try dir.write("open/tibet-twin.yaml", """
            node: t
            maps: maps/
            interlock: {listen: 127.0.0.1:0}
            twin: {feeds: [tcp: 127.0.0.1:0]}
            audit: {dir: \(dir.path)/open/audit, key: \(closed)/guard.key}
            http: {listen: 127.0.0.1:0}

            """)
        chmod(dir.path + "/open/tibet-twin.yaml", 0o644)
        chmod(dir.path + "/open", 0o777)
        let (c3, e3) = try run(["run", "--config", dir.path + "/open/tibet-twin.yaml"])
        #expect(c3 == 2)
        #expect(e3.contains("\(closed)/guard.key: stat failed: EACCES (permission denied) — the audit signing key (tibet-twin keygen) (uid \(uid) may not search \(closed))"), "\(e3)")
    }
}
