import Foundation
import Testing
import TibetTwin
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// A Sparkplug B edge node in Python (paho-mqtt; the protobuf payload encoded by hand from the
/// specification's field numbers): NBIRTH (seq 0, bdSeq), DBIRTH of one device with aliases,
/// then DDATA by alias every 50 ms. On stdin: `status N`, `set METRIC VALUE`, `gap` (skip a seq),
/// `ddeath`, `dbirth`, `silent on|off`. It answers an NCMD `Node Control/Rebirth` with a new
/// NBIRTH + DBIRTH and prints `rebirth`.
final class PythonSparkplugNode {
    let child: Child

    static let script = """
        import struct, sys, threading, time
        import paho.mqtt.client as mqtt
        port, group, node, device = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
        def varint(n):
            out = b""
            while True:
                b = n & 0x7F
                n >>= 7
                if n:
                    out += bytes([b | 0x80])
                else:
                    return out + bytes([b])
        def key(f, wt): return varint((f << 3) | wt)
        def ld(f, b): return key(f, 2) + varint(len(b)) + b
        def metric(name=None, alias=None, ts=None, dtype=None, value=None):
            b = b""
            if name is not None: b += ld(1, name.encode())
            if alias is not None: b += key(2, 0) + varint(alias)
            if ts is not None: b += key(3, 0) + varint(ts)
            if dtype is not None: b += key(4, 0) + varint(dtype)
            if dtype == 10: b += key(13, 1) + struct.pack("<d", value)
            elif dtype == 3: b += key(10, 0) + varint(value & 0xFFFFFFFF)
            elif dtype == 4: b += key(11, 0) + varint(value & 0xFFFFFFFFFFFFFFFF)
            elif dtype == 11: b += key(14, 0) + varint(1 if value else 0)
            return b
        def payload(seq, metrics):
            b = key(1, 0) + varint(int(time.time() * 1000))
            for m in metrics: b += ld(2, m)
            if seq is not None: b += key(3, 0) + varint(seq)
            return b
        DOUBLE, INT32, INT64, BOOL = 10, 3, 4, 11
        names = {"State/Mode": (1, INT32), "Axis/X/Position": (2, DOUBLE), "Hoist/Load": (3, DOUBLE)}
        state = {"State/Mode": 0, "Axis/X/Position": 12.5, "Hoist/Load": 2500.0, "silent": False, "gap": False}
        lock = threading.Lock()
        seq = [0]
        bd = [0]
        def nxt():
            s = seq[0]
            seq[0] = (seq[0] + 1) % 256
            return s
        def t(kind, dev=None): return "spBv1.0/%s/%s/%s" % (group, kind, node) + ("/" + dev if dev else "")
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edge-" + node)
        def birth():
            with lock:
                seq[0] = 0
                now = int(time.time() * 1000)
                c.publish(t("NBIRTH"), payload(nxt(), [metric("bdSeq", None, now, INT64, bd[0]),
                                                       metric("Node Control/Rebirth", 100, now, BOOL, False)]), qos=0)
                dbirth_locked()
        def dbirth_locked():
            now = int(time.time() * 1000)
            ms = [metric(n, a, now, d, state[n]) for n, (a, d) in names.items()]
            c.publish(t("DBIRTH", device), payload(nxt(), ms), qos=0)
        def on_connect(cl, u, flags, rc, props):
            cl.subscribe(t("NCMD"))
            birth()
            print("born", flush=True)
        def on_message(cl, u, msg):
            if b"Node Control/Rebirth" in msg.payload:
                print("rebirth", flush=True)
                birth()
        c.on_connect = on_connect
        c.on_message = on_message
        c.will_set(t("NDEATH"), payload(None, [metric("bdSeq", None, None, INT64, 0)]), qos=1)
        c.connect("127.0.0.1", port, keepalive=5)
        c.loop_start()
        def sender():
            while True:
                time.sleep(0.05)
                with lock:
                    if state["silent"]: continue
                    if state["gap"]:
                        nxt(); state["gap"] = False
                    now = int(time.time() * 1000)
                    ms = [metric(None, a, now, d, state[n]) for n, (a, d) in names.items()]
                    c.publish(t("DDATA", device), payload(nxt(), ms), qos=0)
        threading.Thread(target=sender, daemon=True).start()
        for line in sys.stdin:
            w = line.split()
            if not w: continue
            with lock:
                if w[0] == "status": state["State/Mode"] = int(w[1])
                elif w[0] == "set": state[w[1]] = float(w[2])
                elif w[0] == "gap": state["gap"] = True
                elif w[0] == "silent": state["silent"] = w[1] == "on"
                elif w[0] == "ddeath": c.publish(t("DDEATH", device), payload(nxt(), []), qos=0)
                elif w[0] == "dbirth": dbirth_locked()
            print("ok " + line.strip(), flush=True)
        """

    init(port: Int, group: String = "Plant1", node: String = "TwinServer", device: String = "Crane01", dir: TempDir) throws {
        guard let python = pythonWithPymodbus() else { throw HarnessError("python venv missing: run scripts/setup.sh") }
        try dir.write("edge.py", Self.script)
        child = try Child(python, [dir.file("edge.py"), String(port), group, node, device], name: "edge")
    }

    func command(_ line: String) async { await child.command(line) }

    deinit { child.stop(grace: 1) }
}

/// A broker, the crane PLC, the appliance with a Sparkplug feed bound by `binding`, the Python
/// edge node and the coil watcher.
struct SparkplugSystem {
    let broker: MosquittoBroker
    let scratch: TempDir
    let sim: SimulatorChild
    let rig: ApplianceRig
    let edge: PythonSparkplugNode
    let coils: CoilWatcher

    static func start(binding: String) async throws -> SparkplugSystem {
        let broker = try MosquittoBroker()
        let scratch = try TempDir("tibet-plc")
        let sim = try startCranePLC(dir: scratch)
        let feed = "    - mqtt: {broker: 127.0.0.1:\(broker.port), sparkplug: {group: Plant1, host_id: tibet-e2e}, "
            + "reconnect_min_ms: 50, reconnect_max_ms: 500}"
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: sim.port) + binding], twinFeeds: feed)
        try await rig.start()
        let edge = try PythonSparkplugNode(port: broker.port, dir: rig.dir)
        let coils = try CoilWatcher(port: rig.interlockPort, count: 2, dir: rig.dir)
        return SparkplugSystem(broker: broker, scratch: scratch, sim: sim, rig: rig, edge: edge, coils: coils)
    }
}

@Suite("Sparkplug B twin, end to end", .serialized)
struct SparkplugEndToEndTests {
    static let binding = """
        twin:
          sparkplug:
            group: Plant1
            node: TwinServer
            device: Crane01
            status: State/Mode
            status_codes: {0: operational, 1: fault}
            values: {position_x: Axis/X/Position, load_kg: Hoist/Load}

        """

    @Test func sparkplugTwinPermitsBlocksOnDeathAndSeqGapAndComesBackAfterRebirth() async throws {
        let s = try await SparkplugSystem.start(binding: Self.binding)
        let (scratch, sim, rig, edge, coils) = (s.scratch, s.sim, s.rig, s.edge, s.coils)
        func reason() throws -> Int64? { try intentReasonCode(url: rig.url) }

        #expect(await coils.becomes(0, true), "DBIRTH + DDATA in sync → permit\n\(rig.transcript)\n\(edge.child.transcript)")
        await edge.command("status 1")
        #expect(await coils.becomes(0, false), "the Sparkplug status code 1 is fault → blocked")
        #expect(try reason() == Int64(ReasonCode.statusMismatch.rawValue))
        await edge.command("status 0")
        #expect(await coils.becomes(0, true))

        // DDEATH blocks at once, as NO_TWIN (not after max_age_ms as TWIN_STALE).
        await edge.command("silent on")
        await edge.command("ddeath")
        #expect(await coils.becomes(0, false), "DDEATH → blocked")
        #expect(try reason() == Int64(ReasonCode.noTwin.rawValue), "no twin at once")
        await edge.command("dbirth")
        await edge.command("silent off")
        #expect(await coils.becomes(0, true), "born again → re-armed")

        // A seq gap: the node's view is unreliable → blocked, rebirth requested, back after it.
        await edge.command("gap")
        #expect(await eventually(within: 20) { edge.child.stdoutLines.contains("rebirth") }, "the appliance asked for a rebirth\n\(rig.transcript)")
        #expect(await coils.becomes(0, true, within: 20), "re-armed after the rebirth")
        let metrics = String(decoding: try await httpGet(rig.url + "/metrics"), as: UTF8.self)
        let gapLine = metrics.split(separator: "\n").first { $0.contains("reason=\"sparkplug_sequence\"") }
        #expect(gapLine != nil && !(gapLine?.hasSuffix(" 0") ?? true), "the gap was counted: \(gapLine ?? "none")")
        // Sparkplug states are counted per device as JSON lines are.
        let deviceLine = metrics.split(separator: "\n").first { $0.hasPrefix("tibet_twin_device_twin_lines_accepted_total{device=\"crane-01\"}") }
        #expect(deviceLine.flatMap { $0.split(separator: " ").last.flatMap { Double($0) } } ?? 0 > 0,
                "per-device Sparkplug states: \(deviceLine ?? "none")")

        let code = await rig.terminate()
        #expect(code == 0, "\(rig.transcript)")
        let (vcode, vout) = try rig.verifyAudit()
        #expect(vcode == 0, "\(vout)")
        _ = sim.quit()
        scratch.cleanup()
    }

    @Test func aReloadedMapsSparkplugBindingIsTakenAndTheOldBindingNoLongerFeedsTheDevice() async throws {
        let s = try await SparkplugSystem.start(binding: Self.binding)
        let (scratch, sim, rig, edge, coils) = (s.scratch, s.sim, s.rig, s.edge, s.coils)
        func reason() throws -> Int64? { try intentReasonCode(url: rig.url) }
        func reload(_ map: String) async -> Bool {
            let before = rig.child?.stderrLines.filter { $0.contains("reload applied") }.count ?? 0
            try? rig.dir.write("maps/crane-01.yaml", map)
            rig.child?.signal(SIGHUP)
            return await eventually(within: 20) { (rig.child?.stderrLines.filter { $0.contains("reload applied") }.count ?? 0) > before }
        }
        #expect(await coils.becomes(0, true), "bound to Crane01 → permit\n\(rig.transcript)\n\(edge.child.transcript)")

        // Bound to a device the edge node does not publish: the old binding's states no longer count.
        let other = rigMapYAML(port: sim.port) + Self.binding.replacingOccurrences(of: "device: Crane01", with: "device: Crane02")
        #expect(await reload(other), "\(rig.transcript)")
        #expect(await coils.becomes(0, false), "the binding changed → the twin state is withdrawn")
        try await Task.sleep(for: .seconds(1))
        #expect(try reason() == Int64(ReasonCode.noTwin.rawValue), "Crane01's DDATA (every 50 ms) no longer feed crane-01")
        #expect(coils.current?.first == "0")

        // Back to Crane01: its next DDATA is the twin again.
        #expect(await reload(rigMapYAML(port: sim.port) + Self.binding), "\(rig.transcript)")
        #expect(await coils.becomes(0, true, within: 20), "bound again → re-armed\n\(rig.transcript)")
        let code = await rig.terminate()
        #expect(code == 0, "\(rig.transcript)")
        _ = sim.quit()
        scratch.cleanup()
    }
}
