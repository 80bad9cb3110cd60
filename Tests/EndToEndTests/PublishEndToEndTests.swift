import Foundation
import SparkplugB
import Testing
import TibetTwin
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// An outside MQTT client in Python (paho-mqtt) watching what the appliance publishes: it
/// subscribes to `spBv1.0/#` and `tibet-twin/#` and prints one JSON line per message with the
/// topic, the retain flag, the payload in hex and, for Sparkplug topics, the payload decoded by a
/// protobuf walker written here from the Sparkplug B field numbers (seq; each metric's name,
/// alias, datatype and value). On stdin: `rebirth` (NCMD Node Control/Rebirth = true) and
/// `write DEVICE METRIC` (a DCMD setting a Boolean metric to true), encoded the same way.
final class PythonSparkplugWatcher {
    let child: Child

    static let script = """
        import json, sys, time
        import paho.mqtt.client as mqtt
        port, group, node = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        def rv(b, i):
            n = s = 0
            while True:
                x = b[i]; i += 1; n |= (x & 0x7F) << s; s += 7
                if x < 0x80: return n, i
        def fields(b):
            i, out = 0, []
            while i < len(b):
                k, i = rv(b, i); f, wt = k >> 3, k & 7
                if wt == 0: v, i = rv(b, i)
                elif wt == 1: v = b[i:i+8]; i += 8
                elif wt == 2:
                    l, i = rv(b, i); v = b[i:i+l]; i += l
                elif wt == 5: v = b[i:i+4]; i += 4
                else: raise ValueError("wire type %d" % wt)
                out.append((f, wt, v))
            return out
        def decode(b):
            seq, ms = None, []
            for f, wt, v in fields(b):
                if f == 3: seq = v
                if f == 2:
                    m = {}
                    for g, w, x in fields(v):
                        if g == 1: m["name"] = x.decode()
                        elif g == 2: m["alias"] = x
                        elif g == 4: m["datatype"] = x
                        elif g in (10, 11): m["value"] = x
                        elif g == 14: m["value"] = bool(x)
                        elif g == 15: m["value"] = x.decode()
                    ms.append(m)
            return {"seq": seq, "metrics": ms}
        def varint(n):
            out = b""
            while True:
                b = n & 0x7F
                n >>= 7
                if n: out += bytes([b | 0x80])
                else: return out + bytes([b])
        def key(f, wt): return varint((f << 3) | wt)
        def ld(f, b): return key(f, 2) + varint(len(b)) + b
        def bool_metric(name): return ld(1, name.encode()) + key(4, 0) + varint(11) + key(14, 0) + varint(1)
        def payload(ms): return key(1, 0) + varint(int(time.time() * 1000)) + b"".join(ld(2, m) for m in ms)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watcher")
        def on_connect(cl, u, flags, rc, props):
            cl.subscribe([("spBv1.0/#", 1), ("tibet-twin/#", 1)])
        def on_subscribe(cl, u, mid, codes, props):
            print("subscribed", flush=True)
        def on_message(cl, u, msg):
            out = {"topic": msg.topic, "retain": bool(msg.retain), "hex": msg.payload.hex()}
            if msg.topic.startswith("spBv1.0/") and "/STATE/" not in msg.topic:
                try: out["sp"] = decode(msg.payload)
                except Exception as e: out["error"] = str(e)
            else:
                out["text"] = msg.payload.decode("utf-8", "replace")
            print("msg " + json.dumps(out), flush=True)
        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_message = on_message
        c.connect("127.0.0.1", port, keepalive=5)
        c.loop_start()
        for line in sys.stdin:
            w = line.split()
            if not w: continue
            if w[0] == "rebirth":
                c.publish("spBv1.0/%s/NCMD/%s" % (group, node), payload([bool_metric("Node Control/Rebirth")]), qos=1).wait_for_publish(5)
            elif w[0] == "write":
                c.publish("spBv1.0/%s/DCMD/%s/%s" % (group, node, w[1]), payload([bool_metric(w[2])]), qos=1).wait_for_publish(5)
            print("ok " + line.strip(), flush=True)
        """

    init(port: Int, group: String, node: String, dir: TempDir) async throws {
        guard let python = pythonWithPymodbus() else { throw HarnessError("python venv missing: run scripts/setup.sh") }
        try dir.write("watch.py", Self.script)
        child = try Child(python, [dir.file("watch.py"), String(port), group, node], name: "watch")
        guard await eventually(within: 20, { child.stdoutLines.contains("subscribed") }) else {
            throw HarnessError("the watcher did not subscribe:\n\(child.transcript)")
        }
    }

    struct Message {
        var topic: String
        var retain: Bool
        var bytes: [UInt8]
        /// The Python walker's decoding (Sparkplug topics).
        var outside: JSONValue?
        var text: String?

        var type: String { topic.split(separator: "/").dropFirst(2).first.map(String.init) ?? "" }
        /// Our own decoder's reading of the same bytes.
        var decoded: SparkplugPayload? { bytes.withUnsafeBytes { try? SparkplugPayload(decoding: $0) } }
        /// The outside decoding's metrics by name (births) .
        var outsideMetrics: [String: JSONValue] {
            var out: [String: JSONValue] = [:]
            for m in outside?["metrics"]?.arrayValue ?? [] {
                if let n = m["name"]?.stringValue { out[n] = m }
            }
            return out
        }
    }

    var messages: [Message] {
        child.stdoutLines.filter { $0.hasPrefix("msg ") }.compactMap { line in
            guard let j = try? JSONParser.parse(String(line.dropFirst(4))), let topic = j["topic"]?.stringValue,
                  let hex = j["hex"]?.stringValue else { return nil }
            var bytes: [UInt8] = []
            var i = hex.startIndex
            while i < hex.endIndex {
                let n = hex.index(i, offsetBy: 2)
                bytes.append(UInt8(hex[i..<n], radix: 16) ?? 0)
                i = n
            }
            return Message(topic: topic, retain: j["retain"]?.boolValue ?? false, bytes: bytes, outside: j["sp"], text: j["text"]?.stringValue)
        }
    }

    func messages(_ type: String) -> [Message] { messages.filter { $0.type == type } }

    func command(_ line: String) async { await child.command(line) }

    deinit { child.stop(grace: 1) }
}

/// The appliance publishing its permits (`publish:`) to a real mosquitto, watched from Python.
@Suite("Permits published over MQTT, end to end", .serialized)
struct PublishEndToEndTests {
    struct System {
        let broker: MosquittoBroker
        let sim: SimulatorChild
        let rig: ApplianceRig
        let twin: PythonTwin
        let coils: CoilWatcher
        let watcher: PythonSparkplugWatcher
    }

    static func start() async throws -> System {
        let broker = try MosquittoBroker()
        let scratch = try TempDir("tibet-plc")
        let sim = try startCranePLC(dir: scratch)
        let publish = """
            publish:
              broker: 127.0.0.1:\(broker.port)
              reconnect_min_ms: 50
              reconnect_max_ms: 500
              sparkplug: {group: Guards, node: guard-1}
              json: {prefix: tibet-twin}

            """
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: sim.port)], extraConfig: publish)
        let watcher = try await PythonSparkplugWatcher(port: broker.port, group: "Guards", node: "guard-1", dir: rig.dir)
        try await rig.start()
        let twin = try PythonTwin(port: rig.twinPort, dir: rig.dir)
        let coils = try CoilWatcher(port: rig.interlockPort, count: 2, dir: rig.dir)
        return System(broker: broker, sim: sim, rig: rig, twin: twin, coils: coils, watcher: watcher)
    }

    /// The last value our decoder reads for `metric` of crane-01 across DBIRTH and DDATA (by alias).
    static func lastValue(_ w: PythonSparkplugWatcher, _ metric: String) -> SparkplugValue? {
        var host = SparkplugHost()
        var last: SparkplugValue?
        for m in w.messages where m.topic.hasPrefix("spBv1.0/Guards/") {
            guard let topic = SparkplugTopic(m.topic), let p = m.decoded else { continue }
            for e in host.handle(topic, p) {
                if case .device(_, "crane-01", let metrics) = e { last = metrics[metric]?.value ?? last }
            }
        }
        return last
    }

    @Test func edgeNodeBirthsPublishesOnlyChangesAnswersRebirthRefusesWritesAndDiesCleanly() async throws {
        let s = try await Self.start()
        let w = s.watcher
        #expect(await s.coils.becomes(0, true), "in sync → permit\n\(s.rig.transcript)")

        // NBIRTH: seq 0, bdSeq, Node Control/Rebirth; checked by the outside walker and by our decoder.
        #expect(await eventually(within: 20) { !w.messages("NBIRTH").isEmpty && !w.messages("DBIRTH").isEmpty }, "\(w.child.transcript)")
        let nbirth = try #require(w.messages("NBIRTH").first)
        #expect(nbirth.topic == "spBv1.0/Guards/NBIRTH/guard-1")
        #expect(nbirth.outside?["seq"]?.intValue == 0, "NBIRTH seq 0 (outside decoding)")
        let bdSeq = try #require(nbirth.outsideMetrics["bdSeq"]?["value"]?.intValue, "bdSeq in the NBIRTH: \(nbirth.outside.map { "\($0)" } ?? "")")
        #expect(nbirth.outsideMetrics["Node Control/Rebirth"]?["value"]?.boolValue == false)
        #expect(nbirth.outsideMetrics["Node Control/Rebirth"]?["datatype"]?.intValue == 11, "Boolean")
        #expect(nbirth.decoded?.seq == 0)

        // DBIRTH: per intent a Boolean permit and an Int32 reason code, and the device's reason.
        let dbirth = try #require(w.messages("DBIRTH").first)
        #expect(dbirth.topic == "spBv1.0/Guards/DBIRTH/guard-1/crane-01")
        let dm = dbirth.outsideMetrics
        #expect(dm["Intents/move_left/Permit"]?["datatype"]?.intValue == 11, "\(dm.keys.sorted())")
        #expect(dm["Intents/move_left/Reason Code"]?["datatype"]?.intValue == 3, "Int32")
        #expect(dm["Intents/hoist/Permit"] != nil)
        #expect(dm["Reason Code"] != nil && dm["Reason"]?["datatype"]?.intValue == 12)
        #expect(dbirth.outside?["seq"]?.intValue == 1)

        // The permit rise shows up as a DDATA (read by our host code, aliases resolved).
        #expect(await eventually(within: 15) { Self.lastValue(w, "Intents/move_left/Permit") == .bool(true) }, "\(w.child.transcript)")
        #expect(Self.lastValue(w, "Intents/move_left/Reason Code") == .number(0))

        // The JSON output: retained-able, with the permits, the reason and a timestamp.
        #expect(await eventually(within: 15) {
            w.messages.contains { $0.topic == "tibet-twin/e2e-guard/crane-01" && ($0.text ?? "").contains(#""move_left":true"#) }
        }, "\(w.child.transcript)")
        let json = try JSONParser.parse(try #require(w.messages.last { $0.topic == "tibet-twin/e2e-guard/crane-01" }?.text))
        #expect(json["reason"]?.stringValue == "OK" && json["reason_code"]?.intValue == 0)
        #expect(json["ts"]?.stringValue.flatMap { RFC3339.parse($0) } != nil, "a timestamp a reader can age: \(json)")
        #expect(json["twin_age_ms"]?.intValue != nil && json["physical_age_ms"]?.intValue != nil)

        // A permit drop: the twin goes silent → TWIN_STALE, published as a DDATA.
        await s.twin.command("silent on")
        #expect(await s.coils.becomes(0, false), "silent twin → coil 0")
        #expect(await eventually(within: 15) {
            Self.lastValue(w, "Intents/move_left/Permit") == .bool(false)
                && Self.lastValue(w, "Reason Code") == .number(Double(ReasonCode.twinStale.rawValue))
        }, "\(w.child.transcript)")
        #expect(Self.lastValue(w, "Reason") == .text("TWIN_STALE"))
        // Blocked and stable: the guard ticks on (the ages move) but nothing changes, so nothing is published.
        let quietBefore = w.messages("DDATA").count
        let beat0 = try JSONParser.parse(try runTibetTwin(["status", "--url", s.rig.url, "--json"]).1)["heartbeat"]?.intValue ?? 0
        try await Task.sleep(for: .seconds(2))
        let beat1 = try JSONParser.parse(try runTibetTwin(["status", "--url", s.rig.url, "--json"]).1)["heartbeat"]?.intValue ?? 0
        #expect(beat1 != beat0, "the guard ticked meanwhile")
        #expect(w.messages("DDATA").count == quietBefore, "an unchanged tick publishes nothing")
        // Every DDATA carries a change (a permit or a reason), never the ages alone.
        for m in w.messages("DDATA") {
            let names = Set(m.decoded?.metrics.compactMap(\.alias).map { $0 & 0xFFFF } ?? [])
            #expect(names.contains(1) || names.contains { $0 >= 16 }, "DDATA without a change: \(m.outside.map { "\($0)" } ?? "")")
        }

        // Rebirth on request: a fresh NBIRTH (seq 0, the same session's bdSeq) and DBIRTH.
        await w.command("rebirth")
        #expect(await eventually(within: 15) { w.messages("NBIRTH").count == 2 && w.messages("DBIRTH").count == 2 }, "\(w.child.transcript)")
        #expect(w.messages("NBIRTH").last?.outsideMetrics["bdSeq"]?["value"]?.intValue == bdSeq)
        #expect(w.messages("NBIRTH").last?.outside?["seq"]?.intValue == 0)

        // A write is refused: counted, audited, and the coil stays as the guard says.
        await w.command("write crane-01 Intents/move_left/Permit")
        var counted = false
        for _ in 0..<150 where !counted {
            let metrics = String(decoding: (try? await httpGet(s.rig.url + "/metrics")) ?? [], as: UTF8.self)
            counted = metrics.split(separator: "\n").contains {
                $0.contains("tibet_twin_publish_commands_refused_total") && $0.contains("dcmd_write") && $0.hasSuffix(" 1")
            }
            if !counted { await pause(100) }
        }
        #expect(counted, "the refused DCMD is counted\n\(s.rig.transcript)")
        #expect(s.coils.current?.first == "0", "a write over MQTT changes no permit")
        #expect(await eventually(within: 15) {
            let audit = (try? s.rig.auditShow(json: true)) ?? ""
            return audit.contains("write_rejected") && audit.contains("spBv1.0/Guards/DCMD/guard-1/crane-01")
        }, "the refused write is in the audit chain")

        // A clean stop: every permit 0 published, then the NDEATH with the session's bdSeq.
        let code = await s.rig.terminate()
        #expect(code == 0, "\(s.rig.transcript)")
        #expect(await eventually(within: 15) { !w.messages("NDEATH").isEmpty }, "NDEATH on a clean stop\n\(w.child.transcript)")
        #expect(w.messages("NDEATH").first?.outsideMetrics["bdSeq"]?["value"]?.intValue == bdSeq)
        let (vcode, vout) = try s.rig.verifyAudit()
        #expect(vcode == 0, "\(vout)")
        _ = s.sim.quit()
    }

    @Test func killedApplianceLeavesTheBrokerItsWillTheNDEATHWithTheBirthsBdSeq() async throws {
        let s = try await Self.start()
        let w = s.watcher
        #expect(await eventually(within: 20) { !w.messages("NBIRTH").isEmpty }, "\(w.child.transcript)\n\(s.rig.transcript)")
        let bdSeq = try #require(w.messages("NBIRTH").first?.outsideMetrics["bdSeq"]?["value"]?.intValue)
        s.rig.child?.signal(SIGKILL)
        #expect(await eventually(within: 20) { !w.messages("NDEATH").isEmpty }, "the broker publishes the will\n\(w.child.transcript)")
        let death = try #require(w.messages("NDEATH").first)
        #expect(death.topic == "spBv1.0/Guards/NDEATH/guard-1")
        #expect(death.outsideMetrics["bdSeq"]?["value"]?.intValue == bdSeq, "the will names the birth's session")
        #expect(death.decoded?.metrics.first { $0.name == "bdSeq" }?.value == .number(Double(bdSeq)), "our decoder agrees")
        _ = s.sim.quit()
    }
}
