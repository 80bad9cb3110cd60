import ArgumentParser
import TibetTwin

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `tibet-twin info`: the concept and the deadly scenario, judged by the real rule.
struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Explain the concept and the deadly scenario.")

    func run() throws {
        let d = DeadlyScenario.decision()
        let fault = RFC3339.format(wallNs: DeadlyScenario.faultNs).dropFirst(11).dropLast()
        let twin = RFC3339.format(wallNs: DeadlyScenario.twinNs).dropFirst(11).dropLast()
        var out = """

            tibet-twin \(TibetTwinLibrary.version) — digital-twin synchronicity guard
            No action without proven synchronization.

            The problem: physical ≠ virtual
              A digital twin is a model of a machine, fed by the machine's sensors. There is
              always latency between the sensor and the model. When the twin authorises an
              action on stale data, the machine moves on a state that no longer exists.

            The deadly scenario (a port crane, profile "port": max drift 200 ms)
            \(box(["physical crane (PLC)", "status FAULT", "at \(fault)"],
                   ["digital twin", "status OK (operational)", "as of \(twin) → GO"]))
                    reality: danger                     model: 503 ms behind

              The twin still says OK and would send GO. tibet-twin checks both first:
                permit move_left = \(d.allowed ? 1 : 0)   reason \(d.reasonCode.name) (\(d.reasonCode.rawValue))

            """
        for f in d.failing {
            out += "    ✗ \(f.check.name.padding(12)) \(f.detail)\n"
        }
        out += """
              The coil stays 0, the crane does not move, and the decision is recorded.

            How it works
              1. poll the PLCs over Modbus/TCP (libmodbus): values, status, identity
              2. read the twin's state as JSON lines (file, TCP, unix socket), signed if keyed
              3. on every poll, every twin line and a periodic tick, check all of:
                 presence and quality · physical age · twin age · drift · status ·
                 values within tolerance · identity · not a prediction · the intent's
                 own conditions · audit health — and re-arm only after rearm_ms of health
              4. serve the verdict as read-only Modbus permit coils to the interlock PLC
              5. write every permit change into a signed, hash-chained TIBET audit trail

              Other systems check: is the data there? tibet-twin checks: is it the right
              data, from the right device, at the right time, and does the intent match
              the state? Anything unknown, late, malformed or unverifiable is a 0.

              The guard is a permissive, not the safety function: the hardwired
              e-stop chain stays. Try: tibet-twin profiles · tibet-twin check --help

            """
        print(out, terminator: "")
    }
}

/// Two boxes side by side, each line padded to the same width.
func box(_ left: [String], _ right: [String]) -> String {
    let w = 28
    func row(_ l: String, _ r: String) -> String { "  │ \(l.padding(w - 1))│      │ \(r.padding(w - 1))│" }
    let bar = String(repeating: "─", count: w)
    var lines = ["  ┌\(bar)┐      ┌\(bar)┐"]
    for (l, r) in zip(left, right) { lines.append(row(l, r)) }
    lines.append("  └\(bar)┘      └\(bar)┘")
    return lines.joined(separator: "\n")
}

/// `tibet-twin profiles [--json]`: the industry profiles.
struct ProfilesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profiles",
        abstract: "List the industry profiles (default limits per sector).")

    @Flag(name: [.short, .long], help: "Print the full records as JSON.")
    var json = false

    func run() throws {
        if json {
            print(JSONValue.array(IndustryProfile.all.map(\.json)).canonical)
            return
        }
        var out = "PROFILE        SECTOR                     MAX DRIFT  SAFETY  COMPLIANCE\n"
        for p in IndustryProfile.all {
            out += p.id.rawValue.padding(15) + p.sector.padding(27)
                + "\(p.maxDriftMs) ms".leftPadding(9) + "  " + (p.safetyCritical ? "yes" : "no").padding(8)
                + p.compliance.joined(separator: ", ") + "\n"
        }
        out += "\nmax_age_ms defaults to max_drift_ms; a map's `limits` override both.\n"
        print(out, terminator: "")
    }
}

/// `tibet-twin check`: one offline decision from files.
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Decide one intent offline from a map, a physical state file and a twin feed line.",
        discussion: """
            --physical is {"device":…,"time":"<RFC 3339>","status":…,"values":{…}} (a value may be \
            {"value":…,"quality":…}; the output of `read --json` works as is). --twin is one feed \
            line, read as a running appliance reads its feeds; where the map has twin_key its signature \
            is verified (a bad or missing sig blocks on IDENTITY), and a ts ahead of --now by more than \
            max_skew_ms blocks as TWIN_STALE. Ages are measured from \
            --now (default: the wall clock). One decision has no history, so re-arm and latch do \
            not apply.

            Exit codes: 0 permit, 1 block, 2 bad input (one line on stderr naming file and field).
            """)

    @Option(help: "The device's register map (YAML).")
    var map: String
    @Option(help: "The physical state (JSON file).")
    var physical: String
    @Option(help: "The twin state: one feed line (file).")
    var twin: String
    @Option(help: "The intent to decide.")
    var intent: String
    @Flag(help: "Print the decision as JSON.")
    var json = false
    @Option(help: "Judge as of this time (RFC 3339), instead of the wall clock.")
    var now: String?

    func run() throws {
        do {
            let decision = try decide()
            if json {
                print(decision.json.canonical)
            } else {
                print(CheckCommand.text(decision), terminator: "")
            }
            if !decision.allowed { throw ExitCode(1) }
        } catch let e as CLIInputError {
            CLIOut.error(e.description)
            throw ExitCode(2)
        }
    }

    func decide() throws(CLIInputError) -> SyncDecision {
        let nowReading: ClockReading
        if let now {
            guard let r = CheckInput.now(now) else {
                throw CLIInputError("--now: not an RFC 3339 time with offset: \"\(now)\"")
            }
            nowReading = r
        } else {
            let w = SystemTimeSource().now().wallNs
            nowReading = ClockReading(monotonicNs: w, wallNs: w)
        }
        var deviceMap: DeviceMap
        do {
            deviceMap = try MapLoader.parse(yaml: try CLIFiles.readText(map), file: map)
        } catch let e as MapErrors {
            throw CLIInputError(e.issues.map(\.description).joined(separator: "; "))
        } catch {
            throw CLIInputError("\(error)")
        }
        guard let index = deviceMap.intents.firstIndex(where: { $0.name == intent }) else {
            throw CLIInputError("--intent: \"\(intent)\" is not an intent of \(deviceMap.device) (intents: \(deviceMap.intents.map(\.name).joined(separator: ", ")))")
        }
        var key: TwinPublicKey?
        if let keyPath = deviceMap.twinKey {
            let path = keyPath.hasPrefix("/") ? keyPath : CLIFiles.directory(of: map) + keyPath
            do {
                key = try TwinPublicKey(text: try CLIFiles.readText(path))
            } catch let e as KeyText.Invalid {
                throw CLIInputError("\(map): twin_key: \(path): \(e)")
            } catch {
                throw CLIInputError("\(map): twin_key: \(error)")
            }
        }
        let p: PhysicalState
        let t: TwinState
        do {
            p = try CheckInput.physical(json: try CLIFiles.readText(physical), file: physical, map: deviceMap)
            let line = try CheckInput.twin(line: try CLIFiles.readText(twin), file: twin, map: deviceMap, twinKey: key,
                                             now: nowReading)
            t = line.state
            // A feed applies the rest of such a line too; a misspelt name leaves the real one
            // absent, which blocks. Said on stderr so the cause is visible.
            for name in line.unknownValues {
                CLIOut.error("\(twin): values.\(name): not a register of \(deviceMap.device), ignored")
            }
        } catch let e as CheckInputError {
            throw CLIInputError(e.description)
        } catch {
            throw CLIInputError("\(error)")
        }
        // One offline decision has no history: no re-arm wait.
        deviceMap.limits.rearmMs = 0
        var g = DeviceGuard(map: deviceMap)
        g.updatePhysical(p)
        g.updateTwin(t)
        g.evaluate(now: nowReading, auditOK: true)
        return g.decision(intent: index)
    }

    static func text(_ d: SyncDecision) -> String {
        func ms(_ v: Double?) -> String { v.map { "\(JSONValue.format($0)) ms" } ?? "unknown" }
        var out = "\(d.device) \(d.intent): \(d.allowed ? "PERMIT" : "BLOCK") (\(d.reasonCode.name) \(d.reasonCode.rawValue))\n"
        out += "  \(d.reason)\n"
        out += "  drift \(ms(d.delta.driftMs)) · physical age \(ms(d.delta.physicalAgeMs)) · twin age \(ms(d.delta.twinAgeMs))\n"
        if let s = d.delta.maxSensor, let v = d.delta.maxValueDelta {
            out += "  largest deviation \(s) \(JSONValue.format(v))\n"
        }
        for f in d.failing {
            out += "  ✗ \(f.code.name) (\(f.code.rawValue)) \(f.check.name): \(f.detail)\n"
        }
        return out
    }
}

/// A bad input to a command: one line for stderr.
struct CLIInputError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension StringProtocol {
    /// Pads with spaces on the right to `width` characters (longer text is left as is, plus a space).
    func padding(_ width: Int) -> String {
        count >= width ? String(self) + " " : String(self) + String(repeating: " ", count: width - count)
    }

    /// Pads with spaces on the left to `width` characters.
    func leftPadding(_ width: Int) -> String {
        count >= width ? String(self) : String(repeating: " ", count: width - count) + String(self)
    }
}
