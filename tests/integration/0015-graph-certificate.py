"""0015: a Microsoft 365 app that authenticates with a certificate instead of a secret.

The token request carries an RFC 7523 client assertion signed RS256 by the private key, with
the certificate's SHA-1 thumbprint (x5t); the simulator verifies the signature with openssl
against the registered certificate. The private key is sealed in the catalog (never stored in
clear), the certificate is kept in the profile. A key that is not the registered one gets a
clear verdict (AADSTS700027)."""
import subprocess

from mvtest import *

tid = f"tailspin-{SUFFIX}"
fx, files = graph_fixture(tid, "unused-secret", {"ivy@tailspin.com": {"Inbox": 4, "SentItems": 2}})
keys = os.path.join(RUN, f"certs-{SUFFIX}")
os.makedirs(keys)
for name in ("app", "other"):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN=mailvault {name}", "-keyout", os.path.join(keys, f"{name}.key"),
                    "-out", os.path.join(keys, f"{name}.pem")], check=True, capture_output=True)
shutil_copy = __import__("shutil").copy
shutil_copy(os.path.join(keys, "app.pem"), os.path.join(fx, tid, "app-cert.pem"))
app = json.load(open(os.path.join(fx, tid, "app.json")))
app.pop("client_secret")
app["certificate"] = "app-cert.pem"
json.dump(app, open(os.path.join(fx, tid, "app.json"), "w"))


def cert_profile(t, name, keyname, sim, login="ivy@tailspin.com"):
    prof = {"name": name, "type": "graph",
            "graph": {"tenant_id": tid, "client_id": "app-1",
                      "certificate_file": os.path.join(keys, f"{keyname}.pem"),
                      "private_key_file": os.path.join(keys, f"{keyname}.key"),
                      "login_base": sim.url, "graph_base": sim.url + "/v1.0"},
            "mailboxes": [{"login": login}]}
    path = os.path.join(RUN, f"p-{SUFFIX}-{name}.json")
    json.dump(prof, open(path, "w"))
    cli("profile", "add", "--tenant", t, "--file", path)
    os.unlink(path)


with GraphSim(fx) as sim:
    t = f"cert-{SUFFIX}"
    add_tenant(t)
    cert_profile(t, "cert", "app", sim)
    shown = cli("profile", "show", "--tenant", t, "cert").stdout
    key_text = open(os.path.join(keys, "app.key")).read()
    key_line = [l for l in key_text.splitlines() if l and not l.startswith("-----")][1]
    check("BEGIN CERTIFICATE" in shown and "PRIVATE KEY" not in shown and key_line not in shown,
          "the stored profile keeps the certificate, not the key")
    raw = subprocess.run(["redis-cli", "-p", STACK["MV_REDIS_PORT"], "--raw", "GET",
                          f"mv:cred:{t}:cert:_app_key"], capture_output=True).stdout
    check(raw and b"PRIVATE KEY" not in raw and key_line.encode() not in raw, "the key is sealed in Redis")
    p = cli("profile", "test", "--tenant", t, "cert")
    check(p.stdout.startswith("OK"), f"profile test with the certificate: {p.stdout.strip()}")
    with Workers(1):
        run(t, "cert")
    m = status(t)["mailboxes"][0]
    check(m["state"] == "done" and m["messages"] == 6, "the mailbox is archived with certificate tokens")

    cert_profile(t, "wrongkey", "other", sim, login="ivy.other@tailspin.com")
    p = cli("profile", "test", "--tenant", t, "wrongkey", expect=1)
    check("AADSTS700027" in p.stdout and "not the one registered" in p.stdout,
          f"an unregistered certificate: {p.stdout.strip()}")
print("1 passed, 0 failed")
