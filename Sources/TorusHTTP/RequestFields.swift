/// Typed access to the fields of a JSON request body; every refusal names the field and what
/// was expected, as a 400 error.
struct RequestFields {
    let pairs: [(String, JSONValue)]

    init(_ body: JSONValue) throws {
        guard case let .object(pairs) = body else { throw APIError.badRequest("the request body must be a JSON object") }
        self.pairs = pairs
    }

    var keys: [String] { pairs.map(\.0) }

    func value(_ key: String) -> JSONValue? {
        guard let v = pairs.first(where: { $0.0 == key })?.1, v != .null else { return nil }
        return v
    }

    func int(_ key: String, in range: ClosedRange<Int>? = nil) throws -> Int? {
        guard let v = value(key) else { return nil }
        guard case let .int(i) = v else { throw wrongType(key, "an integer", v) }
        if let range, !range.contains(i) { throw outOfRange(key, i, range) }
        return i
    }

    func number(_ key: String, in range: ClosedRange<Double>? = nil) throws -> Double? {
        guard let v = value(key) else { return nil }
        let d: Double
        switch v {
        case let .int(i): d = Double(i)
        case let .number(x): d = x
        default: throw wrongType(key, "a number", v)
        }
        if let range, !range.contains(d) { throw outOfRange(key, d, range) }
        return d
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard case let .bool(b) = v else { throw wrongType(key, "a boolean", v) }
        return b
    }

    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard case let .string(s) = v else { throw wrongType(key, "a string", v) }
        return s
    }

    /// A string or a list of strings.
    func strings(_ key: String) throws -> [String]? {
        guard let v = value(key) else { return nil }
        switch v {
        case let .string(s): return [s]
        case let .array(items):
            return try items.enumerated().map { i, item in
                guard case let .string(s) = item else { throw wrongType("\(key)[\(i)]", "a string", item) }
                return s
            }
        default: throw wrongType(key, "a string or a list of strings", v)
        }
    }

    func ints(_ key: String) throws -> [Int]? {
        guard let v = value(key) else { return nil }
        guard case let .array(items) = v else { throw wrongType(key, "a list of integers", v) }
        return try items.enumerated().map { i, item in
            guard case let .int(n) = item else { throw wrongType("\(key)[\(i)]", "an integer", item) }
            return n
        }
    }

    func object(_ key: String) throws -> RequestFields? {
        guard let v = value(key) else { return nil }
        guard case .object = v else { throw wrongType(key, "an object", v) }
        return try RequestFields(v)
    }

    func wrongType(_ key: String, _ expected: String, _ got: JSONValue) -> APIError {
        APIError.badRequest("'\(key)' must be \(expected), got \(Self.kind(got))", param: key)
    }

    func outOfRange<T: Comparable>(_ key: String, _ value: T, _ range: ClosedRange<T>) -> APIError {
        APIError.badRequest("'\(key)' must be between \(range.lowerBound) and \(range.upperBound), got \(value)", param: key)
    }

    static func kind(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int: return "an integer"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "a list"
        case .object: return "an object"
        }
    }
}
