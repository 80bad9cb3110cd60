import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Whether nothing listens on the fixed loopback ports `make run` uses (1502 PLC, 5020
/// interlock, 7502 twin, 9102 HTTP): another program (or another run) holding one would make
/// the test about that program.
private func makeRunPortsFree() -> Bool {
    [1502, 5020, 7502, 9102].allSatisfy { port in
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } != 0
    }
}

/// The pids whose parent is `pid`.
private func children(of pid: Int32) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap(Int32.init).filter { p in
        guard let stat = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 2 && Int32(fields[1]) == pid
    }
}

@Suite("make run")
struct MakeRunTests {
    /// scripts/run-local.sh (what `make run` calls): the page shows the crane's permits from the
    /// simulated PLC and the twin; SIGINT (Ctrl-C) stops the script and all three children.
    @Test(.enabled("the fixed ports of make run (1502, 5020, 7502, 9102) are in use on this machine") { makeRunPortsFree() })
    func startsShowsPermitsAndStopsEverythingOnSIGINT() async throws {
        // The test runner starts children with SIGINT and SIGTERM blocked, and bash cannot
        // unblock them; a terminal's Ctrl-C reaches the script with them unblocked. So the script
        // is started the way a shell starts it: through a python3 exec that clears the mask.
        let unblocked = "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, set()); "
            + "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
        let script = try Child("/usr/bin/python3", ["-c", unblocked, "/bin/bash",
                                                    packageRoot.appendingPathComponent("scripts/run-local.sh").path],
                               environment: ["TIBET_TWIN_BIN": binaryURL().path], name: "run-local",
                               currentDirectory: packageRoot.path)
        var kids: [Int32] = []
        defer {
            script.stop(grace: 10)
            for k in kids where kill(k, 0) == 0 { kill(k, SIGKILL) }  // never leave one behind
        }
        #expect(script.waitForLine(timeout: 60) { $0.contains("Status page:  http://127.0.0.1:9102/") } != nil, "\(script.transcript)")
        kids = children(of: script.pid)
        #expect(kids.count == 3, "simulate, run and the twin: \(kids)")

        var status = ""
        let permitted = await eventually(within: 30) {
            status = (try? runTool("/usr/bin/curl", ["-fsS", "http://127.0.0.1:9102/status"]).1) ?? ""
            let json = try? JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any]
            let intents = ((json?["devices"] as? [String: Any])?["crane-01"] as? [String: Any])?["intents"] as? [String: Any]
            return (intents?["move_left"] as? [String: Any])?["permit"] as? Bool == true
        }
        #expect(permitted, "no permit for crane-01 move_left: \(status.prefix(600))")

        script.signal(SIGINT)
        #expect(script.waitForExit(timeout: 30) != nil, "the script did not stop on SIGINT\n\(script.transcript)")
        #expect(await eventually(within: 15) { kids.allSatisfy { kill($0, 0) != 0 } },
                "children left after SIGINT: \(kids.filter { kill($0, 0) == 0 })")
        #expect(script.transcript.contains("audit chain closed"), "the appliance did not stop cleanly\n\(script.transcript)")
    }
}
