#!/bin/sh
# Regenerates the test CA and its certificates (100 years). Tests never run this: they use the
# files committed next to it, and need no openssl at run time.
set -e
cd "$(dirname "$0")"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key.ec
openssl pkcs8 -topk8 -nocrypt -in ca.key.ec -out ca.key && rm ca.key.ec
openssl req -x509 -new -key ca.key -sha256 -days 36500 -config ca.cnf -out ca.pem
for leaf in server other client; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$leaf.key.ec"
    openssl pkcs8 -topk8 -nocrypt -in "$leaf.key.ec" -out "$leaf.key" && rm "$leaf.key.ec"
    openssl req -new -key "$leaf.key" -subj "/CN=usbip_backend test $leaf" -out "$leaf.csr"
    openssl x509 -req -in "$leaf.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 36500 \
        -extfile leaf.cnf -extensions "$leaf" -out "$leaf.pem"
    rm "$leaf.csr"
done
rm -f ca.srl
chmod 644 ./*.key
openssl verify -CAfile ca.pem server.pem other.pem client.pem
