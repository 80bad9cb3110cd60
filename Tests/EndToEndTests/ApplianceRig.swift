import Foundation
import Testing
import TibetTwin
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

// The end-to-end rig of the appliance tests: the built binary (`run`, `simulate`, `keygen`,
// `audit verify`), a twin that speaks the feed protocol from Python, and pymodbus reading the
// permit coils — everything over real sockets on 127.0.0.1, every child stopped by the test.

/// A register map for the rig (the crane of docs/register-maps.md, two intents), its PLC at `port`,
/// with `extraRegisters` (YAML flow mappings) after its two values.
func rigMapYAML(device: String = "crane-01", port: Int, coil: Int = 0, rearmMs: Int = 100, tolerance: Int = 100,
                pollMs: Int = 50, timeoutMs: Int = 100, maxAgeMs: Int = 200, extraRegisters: [String] = []) -> String {
    """
    device: \(device)
    profile: port
    plc: {host: 127.0.0.1, port: \(port), unit: 1, poll_ms: \(pollMs), timeout_ms: \(timeoutMs)}
    limits: {max_drift_ms: \(maxAgeMs), max_age_ms: \(maxAgeMs), rearm_ms: \(rearmMs)}
    identity:
      - {name: serial, address: 9000, type: uint32, expect: 4711}
    status:
      {address: 0, table: holding, type: uint16, values: {0: operational, 1: fault, 2: maintenance}}
    registers:
      - {name: position_x, address: 100, type: float32, unit: m, tolerance: 0.5}
      - {name: load_kg, address: 102, type: uint32, order: CDAB, unit: kg, tolerance: \(tolerance)}
    \(extraRegisters.map { "  - \($0)\n" }.joined())intents:
      move_left: {coil: \(coil)}
      hoist: {coil: \(coil + 1), requires: {load_kg: {max: 40000}}}

    """
}

/// A twin in Python speaking the twin feed protocol (docs/twin-feed.md) over TCP: a line every 50 ms; on stdin `status S`,
/// `set NAME VALUE`, `silent on|off`, `cut` (close the connection; it reconnects on its next
/// line), `port N` (send to another port from now on). With `mqttTopic`, it publishes each
/// line (QoS 1) to that topic of the MQTT broker at `port` instead, with paho-mqtt.
final class PythonTwin {
    let child: Child

    static let script = """
        import datetime, json, socket, sys, threading, time
        host, port, device, values = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
        topic = sys.argv[5] if len(sys.argv) > 5 else None
        state = {"status": "operational", "values": values, "silent": False, "port": port, "cut": False}
        lock = threading.Lock()
        def mqtt_sender():
            import paho.mqtt.client as mqtt
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            c.reconnect_delay_set(min_delay=1, max_delay=1)
            c.on_connect = lambda *a: print("connected", flush=True)
            c.connect_async(host, port, keepalive=5)
            c.loop_start()
            seq = int(time.time() * 1000)
            while True:
                with lock:
                    st = json.loads(json.dumps(state))
                if not st["silent"]:
                    seq += 1
                    ts = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                    line = json.dumps({"device": device, "ts": ts, "seq": seq, "status": st["status"], "values": st["values"]})
                    c.publish(topic, line.encode(), qos=1)
                time.sleep(0.05)
        def sender():
            s, seq = None, int(time.time() * 1000)
            while True:
                with lock:
                    st = json.loads(json.dumps(state))
                    state["cut"] = False
                if st["cut"] and s is not None:
                    s.close(); s = None
                    print("cut", flush=True)
                if not st["silent"]:
                    try:
                        if s is None:
                            s = socket.create_connection((host, st["port"]), timeout=1)
                            print("connected", flush=True)
                        seq += 1
                        ts = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                        line = json.dumps({"device": device, "ts": ts, "seq": seq, "status": st["status"], "values": st["values"]})
                        s.sendall((line + "\\n").encode())
                    except OSError:
                        if s is not None:
                            s.close()
                        s = None
                time.sleep(0.05)
        threading.Thread(target=mqtt_sender if topic else sender, daemon=True).start()
        for line in sys.stdin:
            w = line.split()
            if not w:
                continue
            with lock:
                if w[0] == "status": state["status"] = w[1]
                elif w[0] == "set": state["values"][w[1]] = float(w[2])
                elif w[0] == "silent": state["silent"] = w[1] == "on"
                elif w[0] == "cut": state["cut"] = True
                elif w[0] == "port": state["port"] = int(w[1])
                elif w[0] == "quit": break
            print("ok " + line.strip(), flush=True)
        """

    init(port: Int, device: String = "crane-01", values: [String: Double] = ["position_x": 12.5, "load_kg": 2500],
         mqttTopic: String? = nil, dir: TempDir) throws {
        guard let python = pythonWithPymodbus() else { throw HarnessError("python venv missing: run scripts/setup.sh") }
        try dir.write("twin.py", Self.script)
        let json = "{" + values.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ") + "}"
        child = try Child(python, [dir.file("twin.py"), "127.0.0.1", String(port), device, json] + (mqttTopic.map { [$0] } ?? []),
                          name: "twin")
    }

    /// Sends a command; waits (suspending) for its `ok`.
    func command(_ line: String) async { await child.command(line) }

    deinit { child.stop(grace: 1) }
}

/// The appliance under test: a temp dir with a key, maps and config, and `tibet-twin run`.
final class ApplianceRig {
    let dir: TempDir
    var child: Child?
    var interlockPort = 0
    var httpPort = 0
    var twinPort = 0
    /// Fixed ports (so a restarted appliance and its watchers meet again), or 0 for any.
    let fixedInterlock: Int
    let fixedTwin: Int

    /// The `twin.feeds` entries of the config; nil: one TCP listener.
    let twinFeeds: String?
    /// More top-level config keys (YAML), e.g. `publish:`.
    let extraConfig: String

    init(maps: [String: String], fixedPorts: Bool = false, twinFeeds: String? = nil, extraConfig: String = "") throws {
        dir = try TempDir("tibet-rig")
        self.twinFeeds = twinFeeds
        self.extraConfig = extraConfig
        fixedInterlock = fixedPorts ? closedPort() : 0
        fixedTwin = fixedPorts ? closedPort() : 0
        for (name, yaml) in maps { try dir.write("maps/\(name).yaml", yaml) }
        let (code, _, err) = try runTibetTwin(["keygen", dir.file("guard.key")])
        guard code == 0 else { throw HarnessError("keygen failed: \(err)") }
        try writeConfig()
    }

    func writeConfig(checkpointS: Int = 60) throws {
        try dir.write("tibet-twin.yaml", """
            node: e2e-guard
            maps: maps/
            interlock: {listen: 127.0.0.1:\(fixedInterlock), unit: 1, allow: [127.0.0.0/8], stop_grace_ms: 1500}
            twin:
              feeds:
            \(twinFeeds ?? "    - tcp: 127.0.0.1:\(fixedTwin)")
            audit: {dir: audit, key: guard.key, checkpoint_s: \(checkpointS)}
            http: {listen: 127.0.0.1:0}
            \(extraConfig)
            """)
    }

    /// Starts `tibet-twin run` (with `environment` added) and waits for its `serving …` line.
    func start(environment: [String: String] = [:]) async throws {
        let c = try Child(binaryURL().path, ["run", "--config", dir.file("tibet-twin.yaml")], environment: environment,
                          name: "run", currentDirectory: dir.path)
        child = c
        guard await eventually(within: 30, { c.stdoutLines.contains { $0.hasPrefix("serving ") } || !c.isRunning }),
              let line = c.stdoutLines.first(where: { $0.hasPrefix("serving ") }) else {
            throw HarnessError("the appliance did not start:\n\(c.transcript)")
        }
        var f: [String: Int] = [:]
        for part in line.split(separator: " ") {
            let kv = part.split(separator: "=")
            if kv.count == 2, let v = Int(kv[1].split(separator: ",").first ?? "") { f[String(kv[0])] = v }
        }
        interlockPort = f["interlock"] ?? 0
        httpPort = f["http"] ?? 0
        twinPort = f["twin_tcp"] ?? 0
    }

    /// SIGTERM and the exit status (nil if it did not exit within 15 s).
    func terminate() async -> Int32? {
        guard let c = child else { return nil }
        c.signal(SIGTERM)
        _ = await eventually(within: 15) { !c.isRunning }
        return c.isRunning ? nil : c.waitForExit(timeout: 1)
    }

    var url: String { "http://127.0.0.1:\(httpPort)" }

    /// `tibet-twin audit verify` of the rig's chain, pinned to its key.
    func verifyAudit() throws -> (Int32, String) {
        let (code, out, err) = try runTibetTwin(["audit", "verify", dir.file("audit"), "--key", dir.file("guard.key.pub")])
        return (code, out + err)
    }

    /// `tibet-twin audit show` of the rig's chain (`--json`: every token in full).
    func auditShow(json: Bool = false) throws -> String {
        try runTibetTwin(["audit", "show", dir.file("audit")] + (json ? ["--json"] : [])).1
    }

    var transcript: String { child?.transcript ?? "" }

    deinit {
        child?.stop(grace: 5)
        dir.cleanup()
    }
}

/// An outside interlock client (pymodbus) that also remembers every line it printed, to check
/// that a coil never blinked.
extension CoilWatcher {
    /// Every `coils …` value seen, in order.
    var history: [String] { child.stdoutLines.filter { $0.hasPrefix("coils ") }.map { String($0.dropFirst(6)) } }

    /// Suspends until coil `index` is `value` (liveness bound only).
    func becomes(_ index: Int, _ value: Bool, within timeout: Double = 15) async -> Bool {
        await eventually(within: timeout) {
            guard let bits = current, bits.count > index,
                  let last = child.stdoutLines.last, last.hasPrefix("coils ") else { return false }
            return (bits[bits.index(bits.startIndex, offsetBy: index)] == "1") == value
        }
    }
}

/// The rig's crane PLC (`rigMapYAML`) simulated, with values the twins of these tests agree with.
func startCranePLC(dir: TempDir) throws -> SimulatorChild {
    let sim = try startPLC({ rigMapYAML(port: $0) }, dir: dir)
    _ = sim.command("set position_x 12.5")
    _ = sim.command("set load_kg 2500")
    return sim
}

/// The reason code `tibet-twin status --json` gives for one intent of a device.
func intentReasonCode(url: String, device: String = "crane-01", intent: String = "move_left") throws -> Int64? {
    let json = try JSONParser.parse(try runTibetTwin(["status", "--url", url, "--json"]).1)
    return json["devices"]?[device]?["intents"]?[intent]?["reason_code"]?.intValue
}
