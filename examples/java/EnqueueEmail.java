// Enqueue a password-reset e-mail from Java (a Keycloak extension, say): one RPUSH of a JSON object onto
// the ingest list. With Jedis and your JSON library it is one line:
//
//     try (Jedis jedis = new Jedis(host, port)) { jedis.rpush("mailworker:ingest", json); }
//
// This file has no dependencies (it speaks the Redis protocol over a socket), so it runs as is (Java 17+):
//
//     REDIS_PASSWORD=... java EnqueueEmail.java 127.0.0.1 6379 mailworker:ingest REALM TO LINK [IDEMPOTENCY_KEY]
import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.Socket;
import java.nio.charset.StandardCharsets;

public class EnqueueEmail {
    public static void main(String[] args) throws IOException {
        String key = args.length > 6 ? ",\"idempotency_key\":" + quote(args[6]) : "";
        String json = "{\"type\":\"email\",\"realm\":" + quote(args[3]) + ",\"template\":\"password-reset\""
                + ",\"to\":" + quote(args[4]) + ",\"locale\":\"en\",\"context\":{\"user\":{\"username\":"
                + quote(args[4]) + "},\"link\":" + quote(args[5]) + ",\"link_expiration\":5}" + key + "}";
        try (Socket socket = new Socket(args[0], Integer.parseInt(args[1]))) {
            socket.setSoTimeout(5000);
            BufferedReader in = new BufferedReader(
                    new InputStreamReader(socket.getInputStream(), StandardCharsets.UTF_8));
            String password = System.getenv("REDIS_PASSWORD");
            if (password != null && !password.isEmpty()) {
                socket.getOutputStream().write(command("AUTH", password));
                expect(in.readLine(), "+OK");
            }
            socket.getOutputStream().write(command("RPUSH", args[2], json));
            expect(in.readLine(), ":");
            System.out.println("queued: " + json);
        }
    }

    // A Redis command: an array of binary-safe strings (lengths in UTF-8 bytes).
    static byte[] command(String... parts) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.writeBytes(("*" + parts.length + "\r\n").getBytes(StandardCharsets.UTF_8));
        for (String part : parts) {
            byte[] bytes = part.getBytes(StandardCharsets.UTF_8);
            out.writeBytes(("$" + bytes.length + "\r\n").getBytes(StandardCharsets.UTF_8));
            out.writeBytes(bytes);
            out.writeBytes("\r\n".getBytes(StandardCharsets.UTF_8));
        }
        return out.toByteArray();
    }

    static void expect(String reply, String prefix) throws IOException {
        if (reply == null || !reply.startsWith(prefix)) {
            throw new IOException("Redis answered " + reply + " (check host, port and REDIS_PASSWORD)");
        }
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
