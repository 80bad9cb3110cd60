import Crypto
import Foundation
import Testing
import TibetTwin
import TestSupport

/// The crane map of docs/register-maps.md (without its PLC clock), for `check` through the built binary.
let craneMapYAML = """
    device: crane-01
    profile: port
    plc: {host: 127.0.0.1, port: 1502, unit: 1, poll_ms: 50, timeout_ms: 100}
    limits: {max_drift_ms: 200, max_age_ms: 200, rearm_ms: 100}
    identity:
      - {name: serial, address: 9000, type: uint32, expect: 4711}
    status:
      {address: 0, table: holding, type: uint16,
       values: {0: operational, 1: fault, 2: maintenance, 3: emergency}}
    registers:
      - {name: position_x, address: 100, type: float32, order: ABCD, unit: m, tolerance: 0.5}
      - {name: load_kg, address: 102, type: uint32, order: CDAB, scale: 1, tolerance: 100}
      - {name: hoist_locked, address: 7, table: holding, bit: 3}
    intents:
      move_left: {coil: 0}
      hoist:     {coil: 1, requires: {load_kg: {max: 40000}, hoist_locked: {eq: 0}}}

    """

/// A scratch directory with the files of one `check` run, removed afterwards.
final class CheckFiles {
    let dir: URL

    init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-twin-check-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: dir) }

    @discardableResult
    func write(_ name: String, _ text: String) throws -> String {
        let url = dir.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url)
        return url.path
    }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    static func physical(status: String = "operational", load: Int = 2500, time: String = "2026-11-26T14:32:01.003Z") -> String {
        #"{"device":"crane-01","time":"\#(time)","status":"\#(status)","identity":"ok","values":{"position_x":12.5,"load_kg":\#(load),"hoist_locked":0}}"#
    }

    static func twin(status: String = "operational", ts: String = "2026-11-26T14:32:00.950Z") -> String {
        #"{"device":"crane-01","ts":"\#(ts)","seq":1042,"status":"\#(status)","values":{"position_x":12.5,"load_kg":2500},"predicted":false}"#
    }

    /// Runs `check` with the standard file names and `--now` just after the physical time.
    func check(_ extra: [String] = [], intent: String = "move_left", now: String? = "2026-11-26T14:32:01.010Z") throws -> (Int32, String, String) {
        var args = ["check", "--map", path("maps/crane-01.yaml"), "--physical", path("p.json"),
                    "--twin", path("t.jsonl"), "--intent", intent]
        if let now { args += ["--now", now] }
        return try runTibetTwin(args + extra)
    }
}

@Suite("tibet-twin info / profiles / check (built binary)")
struct GuardCLITests {
    @Test func profilesJSONHasAllSixWithTheirLimits() throws {
        let (code, out, err) = try runTibetTwin(["profiles", "--json"])
        #expect(code == 0, "\(err)")
        let v = try JSONParser.parse(out.trimmingCharacters(in: .whitespacesAndNewlines))
        let records = try #require(v.arrayValue)
        let drift = Dictionary(uniqueKeysWithValues: records.map { ($0["name"]?.stringValue ?? "", $0["max_drift_ms"]?.intValue ?? -1) })
        #expect(drift == ["port": 200, "manufacturing": 100, "energy": 500, "steel": 300, "semiconductor": 50, "building": 5000])
        for r in records {
            #expect(r["sector"]?.stringValue?.isEmpty == false)
            #expect(r["safety_critical"]?.boolValue == (r["name"] != "building"))
            #expect((r["typical_sensors"]?.arrayValue?.count ?? 0) >= 3)
            #expect((r["typical_assets"]?.arrayValue?.count ?? 0) >= 3)
            #expect((r["compliance"]?.arrayValue?.count ?? 0) >= 2)
        }
    }

    @Test func profilesTableListsEveryProfile() throws {
        let (code, out, _) = try runTibetTwin(["profiles"])
        #expect(code == 0)
        let lines = out.split(separator: "\n")
        for p in ProfileID.allCases {
            let line = try #require(lines.first { $0.hasPrefix(p.rawValue + " ") })
            #expect(line.contains("\(IndustryProfile.named(p).maxDriftMs) ms"))
        }
    }

    @Test func infoTellsTheDeadlyScenarioWithTheRealVerdict() throws {
        let (code, out, _) = try runTibetTwin(["info"])
        #expect(code == 0)
        #expect(out.contains("14:32:01.003"))
        #expect(out.contains("14:32:00.500"))
        #expect(out.contains("permit move_left = 0"))
        #expect(out.contains("status mismatch: physical=fault, twin=operational"))
        #expect(out.contains("time drift 503ms > 200ms"))
    }

    @Test func checkPermitsWhenInSync() throws {
        let f = try CheckFiles()
        try f.write("maps/crane-01.yaml", craneMapYAML)
        try f.write("p.json", CheckFiles.physical())
        try f.write("t.jsonl", CheckFiles.twin() + "\n")
        let (code, out, err) = try f.check()
        #expect(code == 0, "\(out) \(err)")
        #expect(out.hasPrefix("crane-01 move_left: PERMIT (OK 0)"))
        #expect(out.contains("Sync OK: drift=53ms, status match"))
        let (jcode, json, _) = try f.check(["--json"], intent: "hoist")
        #expect(jcode == 0)
        let d = try JSONParser.parse(json.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(d["allowed"] == true)
        #expect(d["blocked"] == false)
        #expect(d["reason_code"] == 0)
        #expect(d["failing"] == .array([]))
        #expect(d["delta"]?["drift_ms"] == .double(53))
        #expect(d["delta"]?["physical_age_ms"] == .double(7))
        #expect(d["delta"]?["twin_age_ms"] == .double(60))
    }

    @Test func checkBlocksTheDeadlyScenarioWithExit1() throws {
        let f = try CheckFiles()
        try f.write("maps/crane-01.yaml", craneMapYAML)
        try f.write("p.json", CheckFiles.physical(status: "fault", load: 2700))
        try f.write("t.jsonl", CheckFiles.twin(ts: "2026-11-26T14:32:00.500Z"))
        let (code, out, err) = try f.check(["--json"], now: "2026-11-26T14:32:01.003Z")
        #expect(code == 1, "\(err)")
        let d = try JSONParser.parse(out.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(d["device"] == "crane-01")
        #expect(d["intent"] == "move_left")
        #expect(d["allowed"] == false)
        #expect(d["blocked"] == true)
        #expect(d["reason_code"] == 4)
        #expect(d["reason"] == "BLOCKED: twin stale: age 503ms > 200ms; time drift 503ms > 200ms; status mismatch: physical=fault, twin=operational; value deviation: load_kg=200 > 100")
        let failing = try #require(d["failing"]?.arrayValue)
        #expect(failing.map { $0["code"] } == [4, 5, 6, 7])
        #expect(failing.map { $0["check"] } == ["twin_age", "drift", "status", "values"])
        #expect(d["delta"]?["values"]?["load_kg"] == .double(200))
        #expect(d["delta"]?["max_sensor"] == "load_kg")
        // The human form says the same.
        let (tcode, text, _) = try f.check(now: "2026-11-26T14:32:01.003Z")
        #expect(tcode == 1)
        #expect(text.hasPrefix("crane-01 move_left: BLOCK (TWIN_STALE 4)"))
        #expect(text.contains("STATUS_MISMATCH (6) status: status mismatch: physical=fault, twin=operational"))
    }

    @Test func checkMeasuresAgesFromTheWallClockByDefault() throws {
        let f = try CheckFiles()
        try f.write("maps/crane-01.yaml", craneMapYAML)
        try f.write("p.json", CheckFiles.physical())
        try f.write("t.jsonl", CheckFiles.twin())
        let (code, out, _) = try f.check(["--json"], now: nil)
        #expect(code == 1)
        let d = try JSONParser.parse(out.trimmingCharacters(in: .whitespacesAndNewlines))
        // 14:32:01 on 2026-11-26 is not now: stale, or from the future — either way row 2 blocks.
        #expect(d["reason_code"] == 3)
    }

    @Test func checkBlocksAFutureTwinAndWarnsOfUnknownValueNames() throws {
        let f = try CheckFiles()
        try f.write("maps/crane-01.yaml", craneMapYAML)
        try f.write("p.json", CheckFiles.physical())
        // 5 s ahead of --now: a feed would drop the line; check explains the block instead.
        try f.write("t.jsonl", CheckFiles.twin(ts: "2026-11-26T14:32:06.010Z"))
        let (code, out, err) = try f.check(["--json"])
        #expect(code == 1, "\(err)")
        let d = try JSONParser.parse(out.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(d["reason_code"] == 4)
        #expect(d["reason"]?.stringValue?.contains("ts ahead of the wall clock by 5000ms > 1000ms (max_skew_ms)") == true, "\(out)")
        // A misspelt value name: the line is read as a feed reads it (the name skipped, said on
        // stderr), and the real value is then absent, which blocks.
        try f.write("t.jsonl", CheckFiles.twin().replacingOccurrences(of: "load_kg", with: "load_kgs"))
        let (c2, out2, err2) = try f.check()
        #expect(c2 == 1)
        #expect(err2 == "tibet-twin: \(f.path("t.jsonl")): values.load_kgs: not a register of crane-01, ignored\n")
        #expect(out2.contains("VALUE_DEVIATION"), "\(out2)")
    }

    /// The two `check` examples of docs/cli.md, with the repository's map and example files.
    @Test func readmeCheckExamples() throws {
        let root = packageRoot.path
        func check(_ physical: String, _ twin: String, _ intent: String, _ extra: [String] = []) throws -> (Int32, String, String) {
            try runTibetTwin(["check", "--map", root + "/maps/crane-01.yaml",
                              "--physical", root + "/examples/check/" + physical,
                              "--twin", root + "/examples/check/" + twin, "--intent", intent,
                              "--now", "2026-11-26T14:32:01.010Z"] + extra)
        }
        let (ok, okOut, okErr) = try check("physical-ok.json", "twin-ok.jsonl", "hoist")
        #expect(ok == 0, "\(okOut) \(okErr)")
        #expect(okOut.hasPrefix("crane-01 hoist: PERMIT (OK 0)\n  Sync OK: drift=53ms, status match\n"), "\(okOut)")
        let (deadly, out, err) = try check("physical-fault.json", "twin-deadly.jsonl", "move_left", ["--json"])
        #expect(deadly == 1, "\(err)")
        let d = try JSONParser.parse(out.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(d["reason_code"] == 4)
        #expect(d["reason"]?.stringValue?.hasPrefix("BLOCKED: twin stale: age 510ms > 200ms; time drift 503ms > 200ms; status mismatch: physical=fault, ") == true, "\(out)")
        #expect(err.isEmpty)
    }

    @Test func checkVerifiesTheTwinSignature() throws {
        let f = try CheckFiles()
        let key = Curve25519.Signing.PrivateKey()
        try f.write("maps/keys/crane-01.pub", KeyText.text(of: key.publicKey))
        try f.write("maps/crane-01.yaml", craneMapYAML + "twin_key: keys/crane-01.pub\n")
        try f.write("p.json", CheckFiles.physical())
        let line = CheckFiles.twin()
        let sig = Base64.encode(Array(try key.signature(for: Array(line.utf8))))
        let signed = String(line.dropLast()) + #","sig":"\#(sig)"}"#
        try f.write("t.jsonl", signed + "\n")
        let (code, out, err) = try f.check()
        #expect(code == 0, "\(out) \(err)")
        try f.write("t.jsonl", signed.replacingOccurrences(of: "2500", with: "2501") + "\n")
        let (bad, badOut, _) = try f.check()
        #expect(bad == 1)
        #expect(badOut.contains("identity: twin message signature invalid"))
        try f.write("t.jsonl", line + "\n")
        let (missing, missingOut, _) = try f.check()
        #expect(missing == 1)
        #expect(missingOut.contains("identity: twin message signature missing"))
        // An unreadable key is bad input, not a verdict.
        try FileManager.default.removeItem(atPath: f.path("maps/keys/crane-01.pub"))
        let (nokey, _, nokeyErr) = try f.check()
        #expect(nokey == 2)
        #expect(nokeyErr.contains("twin_key"))
    }

    @Test func badInputExits2WithOneLineNamingFileAndField() throws {
        let f = try CheckFiles()
        try f.write("maps/crane-01.yaml", craneMapYAML)
        try f.write("t.jsonl", CheckFiles.twin())
        try f.write("p.json", #"{"device":"crane-01","status":"operational","values":{}}"#)
        let (code, out, err) = try f.check()
        #expect(code == 2)
        #expect(out.isEmpty)
        #expect(err == "tibet-twin: \(f.path("p.json")): time: missing\n")

        try f.write("p.json", CheckFiles.physical())
        try f.write("t.jsonl", #"{"device":"crane-01","ts":"2026-11-26T14:32:00Z","status":"operational","values":{"load_kg":"heavy"}}"#)
        let (c2, _, e2) = try f.check()
        #expect(c2 == 2)
        #expect(e2 == "tibet-twin: \(f.path("t.jsonl")): values.load_kg: expected a number\n")

        try f.write("t.jsonl", CheckFiles.twin())
        let (c3, _, e3) = try f.check(intent: "fly")
        #expect(c3 == 2)
        #expect(e3 == "tibet-twin: --intent: \"fly\" is not an intent of crane-01 (intents: move_left, hoist)\n")

        let (c4, _, e4) = try f.check(now: "soon")
        #expect(c4 == 2)
        #expect(e4.contains("--now"))

        try f.write("maps/crane-01.yaml", craneMapYAML.replacingOccurrences(of: "float32", with: "flaot32"))
        let (c5, _, e5) = try f.check()
        #expect(c5 == 2)
        #expect(e5.contains("crane-01.yaml:"))
        #expect(e5.split(separator: "\n").count == 1)
    }

    @Test func missingFilesAndOptionsExit2() throws {
        let (code, _, err) = try runTibetTwin(["check", "--map", "/nonexistent/m.yaml", "--physical", "p", "--twin", "t", "--intent", "x"])
        #expect(code == 2)
        #expect(err == "tibet-twin: /nonexistent/m.yaml: cannot open: no such file or directory (ENOENT)\n")
        let (usage, _, usageErr) = try runTibetTwin(["check", "--map", "m.yaml"])
        #expect(usage == 2)
        #expect(usageErr.contains("--physical"))
    }
}
