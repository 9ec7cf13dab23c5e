// Send a password-reset e-mail from Java (a Keycloak extension, an IAM server) through the HTTP API:
// one POST with java.net.http, no dependencies, so it runs as is (Java 17+):
//
//     MAILWORKER_API_TOKEN=mwt_... java SendEmail.java REALM TO LINK [IDEMPOTENCY_KEY]
//
// MAILWORKER_API_URL (default http://127.0.0.1:8025) is where `mailworker serve` listens; the token is a
// producer token (`mailworker token create --scope producer --realm REALM`). Prints the job id; exits 1 with
// the server's error on stderr when the API refuses the request (4xx: the field and the rule) or fails.
// With your JSON library, build the body from a Map instead of the quote() below.
import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class SendEmail {
    public static void main(String[] args) throws IOException, InterruptedException {
        if (args.length < 3) {
            System.err.println("usage: java SendEmail.java REALM TO LINK [IDEMPOTENCY_KEY]");
            System.exit(2);
        }
        String token = System.getenv("MAILWORKER_API_TOKEN");
        if (token == null || token.isEmpty()) {
            System.err.println("error: set MAILWORKER_API_TOKEN to a producer token");
            System.exit(2);
        }
        String base = System.getenv().getOrDefault("MAILWORKER_API_URL", "http://127.0.0.1:8025");
        String realm = URLEncoder.encode(args[0], StandardCharsets.UTF_8).replace("+", "%20");
        String json = "{\"template\":\"password-reset\",\"to\":" + quote(args[1]) + ",\"locale\":\"en\""
                + ",\"context\":{\"user\":{\"username\":" + quote(args[1]) + "},\"link\":" + quote(args[2])
                + ",\"link_expiration\":5}}";

        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(base + "/v1/realms/" + realm + "/emails"))
                .timeout(Duration.ofSeconds(30))
                .header("Authorization", "Bearer " + token)
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(json, StandardCharsets.UTF_8));
        if (args.length > 3) {
            request.header("Idempotency-Key", args[3]);  // sending twice (a retrying caller) sends once
        }
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
        HttpResponse<String> response = client.send(request.build(), HttpResponse.BodyHandlers.ofString());

        if (response.statusCode() / 100 != 2) {
            // 422: {"errors": [{"field": "to", "rule": "..."}]}; others: {"error": "..."} (docs/api.md)
            System.err.println("error: HTTP " + response.statusCode() + ": " + response.body());
            System.exit(1);
        }
        Matcher jobId = Pattern.compile("\"job_id\"\\s*:\\s*\"([^\"]+)\"").matcher(response.body());
        if (!jobId.find()) {
            System.err.println("error: no job id in " + response.body());
            System.exit(1);
        }
        System.out.println(jobId.group(1));
    }

    // A JSON string literal: quotes, backslashes and control characters escaped.
    static String quote(String value) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : value.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }
}
