import HTTPTypes

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
/// with the HTTP status in `code`.
public struct APIError: Error, CustomStringConvertible, Sendable {
    public let status: HTTPResponse.Status
    public let message: String
    public let param: String?
    /// Seconds a client should wait before retrying (429 and 503).
    public var retryAfter: Int?

    public init(_ status: HTTPResponse.Status, _ message: String, param: String? = nil, retryAfter: Int? = nil) {
        self.status = status
        self.message = message
        self.param = param
        self.retryAfter = retryAfter
    }

    public static func badRequest(_ message: String, param: String? = nil) -> APIError { APIError(.badRequest, message, param: param) }

    /// The OpenAI client's exception names by status.
    public var type: String {
        switch status.code {
        case 400: return "BadRequestError"
        case 401: return "AuthenticationError"
        case 403: return "PermissionDeniedError"
        case 404: return "NotFoundError"
        case 405: return "MethodNotAllowedError"
        case 413: return "RequestEntityTooLargeError"
        case 422: return "UnprocessableEntityError"
        case 429: return "RateLimitError"
        case 503: return "ServiceUnavailableError"
        default: return "InternalServerError"
        }
    }

    public var json: JSONValue {
        .object([("error", .object([("message", .string(message)), ("type", .string(type)),
                                    ("param", param.map(JSONValue.string) ?? .null), ("code", .int(status.code))]))])
    }

    public var description: String { "\(status.code) \(type): \(message)" }
}
