import Foundation
import Testing
@testable import Appliance
import Platform
import TibetTwin
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Opening config, maps and keys: the error names the path and the errno (ENOENT, EISDIR),
/// never a guess such as "no such config file" for a file that exists. EACCES needs a process
/// that permissions apply to; the test runner may be root (which may open anything), so that
/// case is tested end to end with a child that drops its privileges (FileErrorCLITests).
@Suite("file errors name the path and errno")
struct FileErrorTests {
    let dir: String

    init() throws {
        dir = NSTemporaryDirectory() + "tibet-fileerr-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir + "/adir.yaml", withIntermediateDirectories: true)
    }

    private func startupError(_ path: String) -> String? {
        do { _ = try LoadedConfig.load(configPath: path); return nil } catch { return error.description }
    }

    @Test func missingConfigIsENOENT() {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(startupError(dir + "/none.yaml") == "\(dir)/none.yaml: cannot read the config file: ENOENT: no such file or directory")
    }

    @Test func configThatIsADirectoryIsEISDIR() {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(startupError(dir + "/adir.yaml") == "\(dir)/adir.yaml: cannot read the config file: EISDIR: is a directory")
    }

    @Test func mapsPathErrorsNameTheErrno() {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var issues: [MapIssue] = []
        let files = MapFiles.mapFiles(in: [dir + "/none", dir + "/adir.yaml/none.yaml"], issues: &issues)
        #expect(files.isEmpty)
        #expect(issues.map(\.description) == [
            "\(dir)/none:1:1: ENOENT: no such file or directory",
            "\(dir)/adir.yaml/none.yaml:1:1: ENOENT: no such file or directory",
        ])
    }

    @Test func keyFileErrorsNameTheErrno() {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(throws: KeyFileError.self) { _ = try KeyFiles.readPrivateKey(path: dir + "/none.key") }
        do { _ = try KeyFiles.readPrivateKey(path: dir + "/none.key") } catch {
            #expect(error.description == "\(dir)/none.key: cannot open the key file: ENOENT: no such file or directory")
        }
        do { _ = try KeyFiles.readPublicKey(path: dir + "/adir.yaml") } catch {
            #expect(error.description == "\(dir)/adir.yaml: cannot read the key file: EISDIR: is a directory")
        }
    }

    /// The search for the directory that blocks a path. As root every directory is searchable
    /// (CAP_DAC_READ_SEARCH), so only the negative case can be checked here; the positive one
    /// runs as an unprivileged child in FileErrorCLITests.
    @Test func permissionHintOnlyForPermissionErrors() {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(PathAccess.hint(Errno(ENOENT), path: dir + "/x") == "")
        #expect(PathAccess.hint(Errno(EISDIR), path: dir + "/x") == "")
        if getuid() == 0 {
            #expect(PathAccess.unsearchableDirectory(on: dir + "/adir.yaml/x") == nil)
            #expect(PathAccess.hint(Errno(EACCES), path: dir + "/x") == " (uid 0 may not open it)")
        }
    }
}
