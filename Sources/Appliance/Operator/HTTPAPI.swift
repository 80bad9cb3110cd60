import Platform
import TibetTwin

/// The outcome of an operator reset (docs/decision-rule.md).
package enum ResetOutcome: Sendable, Hashable {
    /// The named intents were latched and are now re-arming (an empty list: nothing was latched).
    case done(device: String, cleared: [String])
    case unknownDevice(String)
    case unknownIntent(device: String, intent: String)
    /// The reset could not be recorded in the audit chain, so it was not applied.
    case auditFailed(String)
}

/// What the HTTP API needs from the running appliance. The guard loop implements it; tests
/// may use a stand-in.
package protocol ApplianceControl: Sendable {
    /// A status snapshot, built by the guard loop; `nil` if it does not answer in time.
    func status(_ done: @escaping @Sendable (StatusSnapshot?) -> Void)
    /// Clears latches (docs/decision-rule.md), audited with the client's address.
    func reset(device: String, intent: String?, client: String, _ done: @escaping @Sendable (ResetOutcome) -> Void)
    /// The Prometheus text exposition of every metric; the per-device and per-intent series
    /// come from `status` (the same snapshot `/status` shows), and are left out without one.
    func metricsText(status: StatusSnapshot?) -> [UInt8]
    /// Liveness for `/healthz`: the guard ticks and the audit store can write.
    func health() -> HealthSnapshot
}

/// What `/healthz` reports; cheap to read (no guard loop round trip).
package struct HealthSnapshot: Sendable, Hashable {
    /// The guard loop ticked recently (a hung guard shows here, as it does in the heartbeat).
    package var guardAlive: Bool
    package var auditHealthy: Bool
    /// The first full evaluation has completed (READY=1 has been sent).
    package var ready: Bool
    package var heartbeat: UInt16
    /// Milliseconds since the guard loop's last tick.
    package var sinceTickMs: Double

    package init(guardAlive: Bool, auditHealthy: Bool, ready: Bool, heartbeat: UInt16, sinceTickMs: Double) {
        self.guardAlive = guardAlive
        self.auditHealthy = auditHealthy
        self.ready = ready
        self.heartbeat = heartbeat
        self.sinceTickMs = sinceTickMs
    }

    package var healthy: Bool { guardAlive && auditHealthy && ready }
}

/// The routes of the local HTTP API:
///
/// | route | answers |
/// |---|---|
/// | `GET /` | the status page (HTML, refreshes itself) |
/// | `GET /status` | status JSON (docs/cli.md) |
/// | `GET /metrics` | Prometheus text |
/// | `GET /healthz` | liveness: 200 `ok` or 503 with what is wrong |
/// | `GET /readyz` | readiness: 200 while every device's inputs are good, else 503 with the reasons per device |
/// | `POST /reset?device=D[&intent=I]` | clears latches; JSON `{"device":…,"cleared":[…]}` |
///
/// Everything else is 404 (or 405 for a known path with the wrong method). Reset is a POST so a
/// browser prefetch or a crawler can never re-arm a machine, and it passes `ResetGate` first:
/// rate limit per address, Host and Origin, content type, bearer token (docs/operations.md#resets).
package struct HTTPAPI: Sendable {
    let control: any ApplianceControl
    package let resetGate: ResetGate

    package init(control: any ApplianceControl, resetPolicy: ResetPolicy = ResetPolicy()) {
        self.control = control
        self.resetGate = ResetGate(policy: resetPolicy)
    }

    /// The handler to give `HTTPServer`.
    package var handler: HTTPHandler {
        let control = self.control
        let gate = self.resetGate
        return { request, respond in HTTPAPI.route(request, control: control, gate: gate, respond: respond) }
    }

    static func route(_ req: HTTPRequest, control: any ApplianceControl, gate: ResetGate,
                      respond: @escaping @Sendable (HTTPResponse) -> Void) {
        let get = req.method == "GET" || req.method == "HEAD"
        switch req.path {
        case "/", "/index.html":
            guard get else { return respond(methodNotAllowed("GET")) }
            control.status { snap in
                guard let snap else { return respond(guardNotAnswering()) }
                respond(HTTPResponse(status: 200, contentType: "text/html; charset=utf-8", text: snap.html))
            }
        case "/status":
            guard get else { return respond(methodNotAllowed("GET")) }
            control.status { snap in
                guard let snap else { return respond(guardNotAnswering()) }
                respond(HTTPResponse(status: 200, contentType: "application/json", text: snap.json.canonical + "\n"))
            }
        case "/metrics":
            guard get else { return respond(methodNotAllowed("GET")) }
            control.status { snap in
                respond(HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
                                     body: control.metricsText(status: snap)))
            }
        case "/healthz":
            guard get else { return respond(methodNotAllowed("GET")) }
            let h = control.health()
            if h.healthy {
                respond(HTTPResponse(status: 200, text: "ok heartbeat=\(h.heartbeat)\n"))
            } else {
                var what: [String] = []
                if !h.ready { what.append("not ready (first evaluation pending)") }
                if !h.guardAlive {
                    // Before the guard loop exists (start-up) there has been no tick: infinity,
                    // which Int() would trap on.
                    let since = h.sinceTickMs.isFinite ? "\(Int(h.sinceTickMs)) ms since last tick" : "no tick yet"
                    what.append("guard loop not ticking (\(since))")
                }
                if !h.auditHealthy { what.append("audit chain not writable") }
                respond(HTTPResponse(status: 503, text: "degraded: " + what.joined(separator: "; ") + "\n"))
            }
        case "/readyz":
            guard get else { return respond(methodNotAllowed("GET")) }
            let h = control.health()
            control.status { snap in respond(readiness(health: h, status: snap)) }
        case "/reset":
            guard req.method == "POST" else { return respond(methodNotAllowed("POST")) }
            if let refused = gate.check(req) { return respond(refused) }
            var params = req.query
            // A JSON body (`{"device":…,"intent":…}`) works as well as the query string.
            if !req.body.isEmpty {
                guard let body = try? JSONParser.parse(String(decoding: req.body, as: UTF8.self)), body.objectValue != nil else {
                    return respond(jsonError(400, "the body is not a JSON object"))
                }
                for key in ["device", "intent"] {
                    guard let v = body[key], v != .null else { continue }
                    guard let text = v.stringValue else { return respond(jsonError(400, "\(key) must be a string")) }
                    if params[key] == nil { params[key] = text }
                }
            }
            guard let device = params["device"], !device.isEmpty else {
                return respond(jsonError(400, "missing parameter: device"))
            }
            let intent = params["intent"].flatMap { $0.isEmpty ? nil : $0 }
            control.reset(device: device, intent: intent, client: req.remote) { outcome in
                switch outcome {
                case .done(let d, let cleared):
                    respond(HTTPResponse(status: 200, contentType: "application/json", text: JSONValue.object([
                        "device": .string(d), "cleared": .array(cleared.map { .string($0) }),
                    ]).canonical + "\n"))
                case .unknownDevice(let d):
                    respond(jsonError(404, "unknown device \"\(d)\""))
                case .unknownIntent(let d, let i):
                    respond(jsonError(404, "device \"\(d)\" has no intent \"\(i)\""))
                case .auditFailed(let why):
                    respond(jsonError(503, "reset not applied: audit chain not writable: \(why)"))
                }
            }
        default:
            respond(HTTPResponse(status: 404, text: "not found: \(req.path) (try /, /status, /metrics, /healthz, /readyz, POST /reset)\n"))
        }
    }

    /// `/readyz`: ready only while the guard is live (`/healthz`) and every device's inputs
    /// are good. Plain text, first line `ready: …` or `not ready: …`, then one line per failing
    /// device: `DEVICE: problem; problem`.
    static func readiness(health h: HealthSnapshot, status: StatusSnapshot?) -> HTTPResponse {
        var lines: [String] = []
        if !h.ready { lines.append("appliance: first evaluation pending") }
        if !h.guardAlive { lines.append("appliance: guard loop not ticking (\(Int(min(h.sinceTickMs, 1e9))) ms since last tick)") }
        if !h.auditHealthy { lines.append("appliance: audit chain not writable") }
        guard let status else {
            lines.append("appliance: guard loop did not answer in time")
            return HTTPResponse(status: 503, text: "not ready: the guard loop did not answer\n" + lines.joined(separator: "\n") + "\n")
        }
        let failing = status.failingDevices
        for d in failing { lines.append("\(d.device): " + d.inputProblems.joined(separator: "; ")) }
        if lines.isEmpty {
            return HTTPResponse(status: 200, text: "ready: \(status.devices.count) devices, every input good\n")
        }
        let head = "not ready: \(failing.count) of \(status.devices.count) devices with failing inputs"
            + (h.healthy ? "" : ", appliance degraded")
        return HTTPResponse(status: 503, text: head + "\n" + lines.joined(separator: "\n") + "\n")
    }

    static func methodNotAllowed(_ allowed: String) -> HTTPResponse {
        HTTPResponse(status: 405, text: "method not allowed (use \(allowed))\n", headers: [("Allow", allowed)])
    }

    static func guardNotAnswering() -> HTTPResponse {
        HTTPResponse(status: 503, text: "guard loop did not answer in time\n")
    }

    static func jsonError(_ status: Int, _ message: String, headers: [(String, String)] = []) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "application/json",
                     text: JSONValue.object(["error": .string(message)]).canonical + "\n", headers: headers)
    }
}
