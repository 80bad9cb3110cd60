import Foundation
import Testing
import TestSupport
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `simulate --serial` and `read` on the two ends of a socat pty pair (8N1: ptys refuse E/O):
/// the project's own RTU slave against its own RTU master, beside the pymodbus tests.
@Suite("simulate --serial and read over a serial line", .serialized)
struct SerialCLITests {
    static func meter(_ unit: Int, port: String) -> String {
        """
        device: meter-\(unit)
        profile: energy
        plc: {serial: \(port), baud: 19200, parity: N, unit: \(unit), poll_ms: 100, timeout_ms: 300}
        registers:
          - {name: voltage, address: "30001", type: float32, unit: V}
          - {name: mode, address: 10, type: uint8, byte: high}
        intents:
          run: {coil: \(unit)}

        """
    }

    @Test func readsExceptionsAndASilentUnit() throws {
        let pty = try PtyPair()
        defer { pty.stop() }
        let dir = try TempDir("tibet-serial")
        defer { dir.cleanup() }
        for u in [1, 2, 9] { try dir.write("meter-\(u).yaml", Self.meter(u, port: pty.a)) }
        signal(SIGPIPE, SIG_IGN)
        let sim = try Child(binaryURL().path, ["simulate", "--serial", pty.b, "--map", dir.file("meter-1.yaml"),
                                               "--map", dir.file("meter-2.yaml"), "--set", "voltage=230.5"], name: "simulate")
        defer { sim.stop() }
        #expect(sim.waitForLine { $0 == "listening \(pty.b) unit 2 meter-2" } != nil, "\(sim.transcript)")
        func send(_ line: String) -> String? {
            let before = sim.stdoutLines.count
            sim.send(line)
            return sim.waitForLine(timeout: 10) { _ in sim.stdoutLines.count > before }.flatMap { _ in sim.stdoutLines.last }
        }
        #expect(send("@meter-2 set mode 7") == "ok set mode 7")

        // Both units answer; the status is derived.
        for u in [1, 2] {
            let (code, out, err) = try runTibetTwin(["read", "--map", dir.file("meter-\(u).yaml"), "--json"])
            #expect(code == 0, "\(err)")
            let j = try #require(try readJSON(out).first)
            #expect(j["status"]?.stringValue == "operational")
            #expect(j["status_derived"]?.boolValue == true)
            #expect(j["values"]?["voltage"]?["value"]?.doubleValue == 230.5)
            #expect(j["values"]?["mode"]?["value"]?.doubleValue == (u == 2 ? 7 : 0))
        }
        // Unit 9 is on nobody's map: no answer, a timeout, the status unknown.
        let (c9, out9, _) = try runTibetTwin(["read", "--map", dir.file("meter-9.yaml"), "--json"])
        #expect(c9 == 1)
        let j9 = try #require(try readJSON(out9).first)
        #expect(j9["values"]?["voltage"]?["quality"]?.stringValue == "bad_timeout")
        #expect(j9["status"] == .null)
        // A forced exception, then a stalled (silent) device.
        #expect(send("@meter-1 exception 4") == "ok exception 4")
        let (c1, out1, _) = try runTibetTwin(["read", "--map", dir.file("meter-1.yaml"), "--json"])
        #expect(c1 == 1)
        #expect(try readJSON(out1).first?["values"]?["voltage"]?["quality"]?.stringValue == "bad_exception(4)")
        #expect(send("@meter-1 exception off") == "ok exception off")
        #expect(send("@meter-2 stall 5000") == "ok stall 5000")
        let (c2, out2, _) = try runTibetTwin(["read", "--map", dir.file("meter-2.yaml"), "--json"])
        #expect(c2 == 1)
        #expect(try readJSON(out2).first?["values"]?["voltage"]?["quality"]?.stringValue == "bad_timeout")
        // Its neighbour still answers.
        let (c1b, _, _) = try runTibetTwin(["read", "--map", dir.file("meter-1.yaml")])
        #expect(c1b == 0)
        sim.send("quit")
        #expect(sim.waitForExit(timeout: 10) == 0)
    }

    @Test func validateRefusesAnOverBudgetBusAndWarnsOfModiconLookingAddresses() throws {
        let dir = try TempDir("tibet-serial")
        defer { dir.cleanup() }
        // 8 meters every 100 ms at 9600 baud: 3.3 s of bus time per second.
        for u in 1...8 {
            try dir.write("bus/meter-\(u).yaml", Self.meter(u, port: "/dev/ttyUSB0")
                .replacingOccurrences(of: "baud: 19200", with: "baud: 9600"))
        }
        let (code, out, err) = try runTibetTwin(["maps", "validate", dir.file("bus")])
        #expect(code == 1)
        #expect(out.isEmpty)
        #expect(err.contains("plc: link /dev/ttyUSB0 9600 8N1 cannot carry its polls: 8 devices (meter-1, meter-2, meter-3, meter-4, meter-5, meter-6, meter-7, meter-8) need"), "\(err)")
        #expect(err.contains("% more than it has; poll at least"))
        // At 115200 baud and every 250 ms the same bus fits: one line per device and one for the link.
        for u in 1...8 {
            try dir.write("bus/meter-\(u).yaml", Self.meter(u, port: "/dev/ttyUSB0")
                .replacingOccurrences(of: "baud: 19200", with: "baud: 115200").replacingOccurrences(of: "poll_ms: 100", with: "poll_ms: 250"))
        }
        let (ok, out2, err2) = try runTibetTwin(["maps", "validate", dir.file("bus")])
        #expect(ok == 0, "\(err2)")
        #expect(out2.split(separator: "\n").last?.hasPrefix("link /dev/ttyUSB0 115200 8N1: 8 devices, 64.0 requests/s, busy ") == true, "\(out2)")
        // An unquoted 30001 in the input table: valid, with a warning on stderr.
        try dir.write("warn/m.yaml", Self.meter(1, port: "/dev/ttyUSB0").replacingOccurrences(of: "address: \"30001\"", with: "address: 30001, table: input"))
        let (w, _, werr) = try runTibetTwin(["maps", "validate", dir.file("warn")])
        #expect(w == 0)
        #expect(werr.contains("m.yaml:5:"))
        #expect(werr.contains(": warning: registers[0].address: 30001 looks like a Modicon address, but unquoted it is read as protocol address 30001 of the input table"), "\(werr)")
    }

    @Test func serialMapWithoutSerialOptionIsAClearError() throws {
        let dir = try TempDir("tibet-serial")
        defer { dir.cleanup() }
        try dir.write("meter-1.yaml", Self.meter(1, port: "/dev/ttyUSB0"))
        let (code, _, err) = try runTibetTwin(["simulate", "--map", dir.file("meter-1.yaml")])
        #expect(code == 2)
        #expect(err.contains("meter-1 is a serial device (/dev/ttyUSB0): serve it with --serial PATH"))
    }
}
