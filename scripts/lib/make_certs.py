"""Makes a throw-away PKI for the TLS checks (PEM files in DIR):

    ca.pem                      the server's CA
    server.pem, server.key      the server's certificate (localhost, 127.0.0.1) and key
    client-ca.pem               the CA client certificates must chain to (mTLS)
    client.pem, client.key      a client certificate of that CA
    rogue.pem, rogue.key        a client certificate of another CA

Usage: python make_certs.py DIR   (needs the `cryptography` package)
"""

import datetime
import ipaddress
import pathlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
VALID = (NOW - datetime.timedelta(days=1), NOW + datetime.timedelta(days=2))


def name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def key():
    return ec.generate_private_key(ec.SECP256R1())


def ca(common_name):
    k = key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(name(common_name))
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(VALID[0])
        .not_valid_after(VALID[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(k, hashes.SHA256())
    )
    return cert, k


def leaf(issuer, issuer_key, common_name, sans, usage):
    k = key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(issuer.subject)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(VALID[0])
        .not_valid_after(VALID[1])
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert, k


def write(directory, stem, cert, k=None):
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if k is not None:
        (directory / f"{stem}.key").write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def main(directory):
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    server_ca, server_ca_key = ca("itc check server CA")
    client_ca, client_ca_key = ca("itc check client CA")
    rogue_ca, rogue_ca_key = ca("rogue CA")
    write(directory, "ca", server_ca)
    write(directory, "client-ca", client_ca)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    write(directory, "server", *leaf(server_ca, server_ca_key, "localhost", sans, ExtendedKeyUsageOID.SERVER_AUTH))
    client_sans = [x509.DNSName("py-tls-agent")]
    write(directory, "client", *leaf(client_ca, client_ca_key, "py-tls-agent", client_sans, ExtendedKeyUsageOID.CLIENT_AUTH))
    write(directory, "rogue", *leaf(rogue_ca, rogue_ca_key, "py-tls-agent", client_sans, ExtendedKeyUsageOID.CLIENT_AUTH))


if __name__ == "__main__":
    main(sys.argv[1])
