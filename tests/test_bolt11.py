"""BOLT #11 invoices: the spec's own examples, crafted defects, and round-trip properties."""

from __future__ import annotations

import hashlib
import string

import coincurve
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distributedcharge.lightning import bech32
from distributedcharge.lightning.bolt11 import (
    MAX_AMOUNT_MSAT,
    NETWORK_PREFIXES,
    Invoice,
    InvoiceError,
    RouteHop,
    decode,
    encode,
)

SPEC_PRIVATE_KEY = bytes.fromhex("e126f68f7eafcc8b74f54d269fe206be715000f94dac067d1c04a8ca3b2db734")
SPEC_PAYEE = "03e7156ae33b0a208d0744199163177e909e80176e55d97a2f221ede0f934dd9ad"
SPEC_HASH = bytes.fromhex("0001020304050607080900010203040506070809000102030405060708090102")
SPEC_SECRET = bytes.fromhex("11" * 32)
SPEC_TIMESTAMP = 1496314658
SPEC_FEATURES = 1 << 8 | 1 << 14
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
CAKE_HASH = bytes.fromhex("3925b6f67e2c340036ed12093dd44e0368df1b6ea26c53dbe4811f58fd5db8c1")

# Test-vector strings copied from lightning/bolts 11-payment-encoding.md at commit 14901bd.
SPEC = {
    "donation": (
        "lnbc1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqq"
        "qsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6twvus8g6rfwvs"
        "8qun0dfjkxaq9qrsgq357wnc5r2ueh7ck6q93dj32dlqnls087fxdwk8qakdyafkq3yap9us6v52vjjsrvywa6rt"
        "52cm9r9zqt8r2t7mlcwspyetp5h2tztugp9lfyql"
    ),
    "coffee": (
        "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqw"
        "zqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpu9qrsgquk0rl77nj30yxdy"
        "8j9vdx85fkpmdla2087ne0xh8nhedh8w27kyke0lp53ut353s06fv3qfegext0eh0ymjpf39tuven09sam30g4vg"
        "pfna3rh"
    ),
    "nonsense": (
        "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqw"
        "zqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpu9qrsgqhtj"
        "pauu9ur7fw2thcl4y9vfvh4m9wlfyz2gem29g5ghe2aak2pm3ps8fdhtceqsaagty2vph7utlgj48u0ged6a337a"
        "ewvraedendscp573dxr"
    ),
    "hashed": (
        "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzq"
        "fqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2a"
        "hrqs9qrsgq7ea976txfraylvgzuxs8kgcw23ezlrszfnh8r6qtfpr6cxga50aj6txm9rxrydzd06dfeawfk6swup"
        "vz4erwnyutnjq7x39ymw6j38gp7ynn44"
    ),
    "testnet_p2pkh_fallback": (
        "lntb20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygshp58yjmdan79s6qqdh"
        "dzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqf"
        "qypqfpp3x9et2e20v6pu37c5d9vax37wxq72un989qrsgqdj545axuxtnfemtpwkc45hx9d2ft7x04mt8q7y6t0k"
        "2dge9e7h8kpy9p34ytyslj3yu569aalz2xdk8xkd7ltxqld94u8h2esmsmacgpghe9k8"
    ),
    "route_hints": (
        "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzq"
        "fqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2a"
        "hrqsfpp3qjmp7lwpagxun9pygexvgpjdc4jdj85fr9yq20q82gphp2nflc7jtzrcazrra7wwgzxqc8u7754cdlpf"
        "rmccae92qgzqvzq2ps8pqqqqqqpqqqqq9qqqvpeuqafqxu92d8lr6fvg0r5gv0heeeqgcrqlnm6jhphu9y00rrhy"
        "4grqszsvpcgpy9qqqqqqgqqqqq7qqzq9qrsgqdfjcdk6w3ak5pca9hwfwfh63zrrz06wwfya0ydlzpgzxkn5xags"
        "qz7x9j4jwe7yj7vaf2k9lqsdk45kts2fd0fkr28am0u4w95tt2nsq76cqw0"
    ),
    "p2sh": (
        "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygshp58yjmdan79s6qqdh"
        "dzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqf"
        "qypqfppj3a24vwu6r8ejrss3axul8rxldph2q7z99qrsgqz6qsgww34xlatfj6e3sngrwfy3ytkt29d2qttr8qz2"
        "mnedfqysuqypgqex4haa2h8fx3wnypranf3pdwyluftwe680jjcfp438u82xqphf75ym"
    ),
    "p2wpkh": (
        "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygshp58yjmdan79s6qqdh"
        "dzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqf"
        "qypqfppqw508d6qejxtdg4y5r3zarvary0c5xw7k9qrsgqt29a0wturnys2hhxpner2e3plp6jyj8qx7548zr2z7"
        "ptgjjc7hljm98xhjym0dg52sdrvqamxdezkmqg4gdrvwwnf0kv2jdfnl4xatsqmrnsse"
    ),
    "p2wsh": (
        "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygshp58yjmdan79s6qqdh"
        "dzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqf"
        "qypqfp4qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q9qrsgq9vlvyj8cqvq6ggvpwd53jn"
        "cp9nwc47xlrsnenq2zp70fq83qlgesn4u3uyf4tesfkkwwfg3qs54qe426hp3tz7z6sweqdjg05axsrjqp9yrrwc"
    ),
    "p2tr": (
        "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzq"
        "fqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2a"
        "hrqsfp4pptdvg0d2nj99568qn6ssdy4cygnwuxgw2ukmnwgwz7jpqjz2kszs9qrsgqy606dznq28exnydt2r4c29"
        "y56xjtn3sk4mhgjtl4pg2y4ar3249rq4ajlmj9jy8zvlzw7cr8mggqzm842xfr0v72rswzq9xvr4hknfsqwmn6xd"
    ),
    "pico": (
        "lnbc9678785340p1pwmna7lpp5gc3xfm08u9qy06djf8dfflhugl6p7lgza6dsjxq454gxhj9t7a0sd8dgfkx7cm"
        "twd68yetpd5s9xar0wfjn5gpc8qhrsdfq24f5ggrxdaezqsnvda3kkum5wfjkzmfqf3jkgem9wgsyuctwdus9xgr"
        "cyqcjcgpzgfskx6eqf9hzqnteypzxz7fzypfhg6trddjhygrcyqezcgpzfysywmm5ypxxjemgw3hxjmn8yptk7un"
        "td9hxwg3q2d6xjcmtv4ezq7pqxgsxzmnyyqcjqmt0wfjjq6t5v4khxsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg"
        "3zyg3zyg3zyg3zyg3zygsxqyjw5qcqp2rzjq0gxwkzc8w6323m55m4jyxcjwmy7stt9hwkwe2qxmy8zpsgg7jcuw"
        "z87fcqqeuqqqyqqqqlgqqqqn3qq9q9qrsgqrvgkpnmps664wgkp43l22qsgdw4ve24aca4nymnxddlnp8vh9v2sd"
        "xlu5ywdxefsfvm0fq3sesf08uf6q9a2ke0hc9j6z6wlxg5z5kqpu2v9wz"
    ),
    "features_8_14_99": (
        "lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyet"
        "pdeessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q5sqqqqqqqqqqqqqqqqsgq2a25d"
        "xl5hrntdtn6zvydt7d66hyzsyhqs4wdynavys42xgl6sgx9c4g7me86a27t07mdtfry458rtjr0v92cnmswpsjsc"
        "gt2vcse3sgpz3uapa"
    ),
    "features_upper": (
        "LNBC25M1PVJLUEZPP5QQQSYQCYQ5RQWZQFQQQSYQCYQ5RQWZQFQQQSYQCYQ5RQWZQFQYPQDQ5VDHKVEN9V5SXYET"
        "PDEESSP5ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYGS9Q5SQQQQQQQQQQQQQQQQSGQ2A25D"
        "XL5HRNTDTN6ZVYDT7D66HYZSYHQS4WDYNAVYS42XGL6SGX9C4G7ME86A27T07MDTFRY458RTJR0V92CNMSWPSJSC"
        "GT2VCSE3SGPZ3UAPA"
    ),
    "ignored_fields": (
        "lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyet"
        "pdeessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q5sqqqqqqqqqqqqqqqqsgq2qrqq"
        "qfppnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqppnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"
        "qqqpp4qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqhpnqqqqqqqqqqqqqqqqqqqqqqqqqq"
        "qqqqqqqqqqqqqqqqqqqqqqqqqhp4qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqspnqqqq"
        "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqsp4qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"
        "qqqqqqqqqqqqqqqnp5qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqnpkqqqqqqqqqqqqqqq"
        "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqz599y53s3ujmcfjp5xrdap68qxymkqphwsexhmhr8wdz5usdz"
        "kzrse33chw6dlp3jhuhge9ley7j2ayx36kawe7kmgg8sv5ugdyusdcqzn8z9x"
    ),
    "metadata": (
        "lnbc10m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdp9wpshjmt9de6zqmt"
        "9w3skgct5vysxjmnnd9jx2mq8q8a04uqsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9"
        "q2gqqqqqqsgq7hf8he7ecf7n4ffphs6awl9t6676rrclv9ckg3d3ncn7fct63p6s365duk5wrk202cfy3aj5xnnp"
        "5gs3vrdvruverwwq7yzhkf5a3xqpd05wjc"
    ),
    "high_s_recovery": (
        "lnbc1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqq"
        "qsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6twvus8g6rfwvs"
        "8qun0dfjkxaq9qrsgq357wnc5r2ueh7ck6q93dj32dlqnls087fxdwk8qakdyafkq3yap2r09nt4ndd0unm3z9u5"
        "t48y6ucv4r5sg7lk98c77ctvjczkspk5qprc90gx"
    ),
    "bad_feature_100": (
        "lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyet"
        "pdeessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q4psqqqqqqqqqqqqqqqqsgqtqyx"
        "5vggfcsll4wu246hz02kp85x4katwsk9639we5n5yngc3yhqkm35jnjw4len8vrnqnf5ejh0mzj9n3vz2px97eve"
        "ktfm2l6wqccp3y7372"
    ),
    "bad_checksum": (
        "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9"
        "wlrswe78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvya"
        "kky2zr4cusd45tftc9c5fh0nnqpnl2jfll544esqchsrnt"
    ),
    "no_separator": (
        "pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4"
        "eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4cus"
        "d45tftc9c5fh0nnqpnl2jfll544esqchsrny"
    ),
    "mixed_case": (
        "LNBC2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9"
        "wlrswe78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvya"
        "kky2zr4cusd45tftc9c5fh0nnqpnl2jfll544esqchsrny"
    ),
    "unrecoverable": (
        "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7"
        "enxv4jsxqzpusp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqwgt7mcn5yqw3yx0"
        "w94pswkpq6j9uh6xfqqqtsk4tnarugeektd4hg5975x9am52rz4qskukxdmjemg92vvqz8nvmsye63r5ykel43pg"
        "z7zq0g2"
    ),
    "too_short": (
        "lnbc1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd"
        "5kgetjypeh2ursdae8g6na6hlh"
    ),
    "bad_multiplier": (
        "lnbc2500x1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7"
        "enxv4jsxqzpusp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqrrzc4cvfue4zp3h"
        "ggxp47ag7xnrlr8vgcmkjxk3j5jqethnumgkpqp23z9jclu3v0a7e0aruz366e9wqdykw6dxhdzcjjhldxq0w6wg"
        "qcnu43j"
    ),
    "sub_msat": (
        "lnbc2500000001p1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxat"
        "syp3k7enxv4jsxqzpusp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgq0lzc236j9"
        "6a95uv0m3umg28gclm5lqxtqqwk32uuk4k6673k6n5kfvx3d2h8s295fad45fdhmusm8sjudfhlf6dcsxmfvkeyw"
        "mjdkxcp99202x"
    ),
    "missing_s": (
        "lnbc20m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdh"
        "dzgynm4zwqd5d7xmw5fk98klysy043l2ahrqs9qrsgq7ea976txfraylvgzuxs8kgcw23ezlrszfnh8r6qtfpr6c"
        "xga50aj6txm9rxrydzd06dfeawfk6swupvz4erwnyutnjq7x39ymw6j38gp49qdkj"
    ),
    "high_s_with_n": (
        "lnbc25m1p70xwfzpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmm"
        "wwd5kgetjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaqnp4q0n326hr8v9zprg8gsvezcch06gfaqqhde2aj"
        "730yg0durunfhv66sp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqsp5zyg3zyg3"
        "zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygsp5cfzp9ugllvk03rltd6hvndxj26ux6gcxc5azyxk060"
        "rj9tzghct5zvjlps76gx8wpq5yuu79688k8gnm2c0al6v608s96l0xzrrlqqwnzxmu"
    ),
}

# The first example as it stood before payment secrets (earlier revision of the same file).
LEGACY_DONATION = (
    "lnbc1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kg"
    "etjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaq8rkx3yf5tcsyz3d73gafnh3cax9rn449d9p5uxz9ezhhypd0e"
    "lx87sjle52x86fux2ypatgddc6k63n7erqz25le42c4u4ecky03ylcqca784w"
)


def expect(name: str, **overrides: object) -> tuple[str, dict[str, object]]:
    """The fields every spec example shares, with the ones this example changes."""
    fields: dict[str, object] = dict(
        network="mainnet",
        amount_msat=None,
        timestamp=SPEC_TIMESTAMP,
        expiry=3600,
        payment_hash=SPEC_HASH,
        payment_secret=SPEC_SECRET,
        description=None,
        description_hash=None,
        payee=bytes.fromhex(SPEC_PAYEE),
        min_final_cltv_expiry=18,
        features=SPEC_FEATURES,
    )
    fields.update(overrides)
    return name, fields


VALID = [
    expect("donation", description="Please consider supporting this project"),
    expect("coffee", amount_msat=250_000_000, description="1 cup coffee", expiry=60),
    expect("nonsense", amount_msat=250_000_000, description="ナンセンス 1杯", expiry=60),
    expect("hashed", amount_msat=2_000_000_000, description_hash=CAKE_HASH),
    expect(
        "testnet_p2pkh_fallback", network="testnet", amount_msat=2_000_000_000, description_hash=CAKE_HASH
    ),
    expect("route_hints", amount_msat=2_000_000_000, description_hash=CAKE_HASH),
    expect("p2sh", amount_msat=2_000_000_000, description_hash=CAKE_HASH),
    expect("p2wpkh", amount_msat=2_000_000_000, description_hash=CAKE_HASH),
    expect("p2wsh", amount_msat=2_000_000_000, description_hash=CAKE_HASH),
    expect("p2tr", amount_msat=2_000_000_000, description_hash=CAKE_HASH),
    expect(
        "pico",
        amount_msat=967_878_534,
        timestamp=1572468703,
        payment_hash=bytes.fromhex("462264ede7e14047e9b249da94fefc47f41f7d02ee9b091815a5506bc8abf75f"),
        description=(
            'Blockstream Store: 88.85 USD for Blockstream Ledger Nano S x 1, "Back In My Day" Sticker x 2, '
            '"I Got Lightning Working" Sticker x 2 and 1 more items'
        ),
        expiry=604800,
        min_final_cltv_expiry=10,
    ),
    *(
        expect(name, amount_msat=2_500_000_000, description="coffee beans", features=SPEC_FEATURES | 1 << 99)
        for name in ("features_8_14_99", "features_upper", "ignored_fields")
    ),
    # The example negates s without flipping the recovery id, so recovery yields another key; what
    # it checks is that recovery accepts a high-S signature at all (see test_high_s_recovery...).
    expect(
        "high_s_recovery",
        description="Please consider supporting this project",
        payee=bytes.fromhex("02d0139ce7427d6dfffd26a326c18be754ef1e64672b42694ba5b23ef6e6e7803d"),
    ),
]

INVALID = [
    ("bad_feature_100", "unknown required feature bit 100"),
    ("bad_checksum", "not valid bech32: bad checksum"),
    ("no_separator", "not valid bech32: no human-readable part"),
    ("mixed_case", "not valid bech32: mixed upper and lower case"),
    ("unrecoverable", "signature is not recoverable"),
    ("too_short", "too short: the data part has 103 characters"),
    ("bad_multiplier", "unknown amount multiplier 'x'"),
    ("sub_msat", "sub-millisatoshi precision"),
    ("missing_s", r"no payment secret \(`s` field\) although the payment_secret feature"),
    ("high_s_with_n", "not in low-S form"),
    # We do not carry the `m` field, so an invoice that makes payment_metadata compulsory is refused.
    ("metadata", "unknown required feature bit 48"),
]


def fields_of(invoice: Invoice) -> dict[str, object]:
    return {name: getattr(invoice, name) for name in expect("")[1]}


@pytest.mark.parametrize(("name", "expected"), VALID, ids=[name for name, _ in VALID])
def test_spec_valid_examples_decode_to_their_stated_fields(
    name: str, expected: dict[str, object]
) -> None:
    invoice = decode(SPEC[name])
    assert fields_of(invoice) == expected
    assert invoice.raw == SPEC[name].lower()


def test_spec_route_hint_examples_give_every_hop() -> None:
    first = bytes.fromhex("029e03a901b85534ff1e92c43c74431f7ce72046060fcf7a95c37e148f78c77255")
    second = b"\x03" + first[1:]
    assert decode(SPEC["route_hints"]).route_hints == (
        (
            RouteHop(first, 0x0102030405060708, fee_base_msat=1, fee_ppm=20, cltv_delta=3),
            RouteHop(second, 0x030405060708090A, fee_base_msat=2, fee_ppm=30, cltv_delta=4),
        ),
    )
    hop = RouteHop(
        bytes.fromhex("03d06758583bb5154774a6eb221b1276c9e82d65bbaceca806d90e20c108f4b1c7"),
        589390 << 40 | 3312 << 16 | 1,
        fee_base_msat=1000,
        fee_ppm=2500,
        cltv_delta=40,
    )
    assert decode(SPEC["pico"]).route_hints == ((hop,),)


def test_upper_case_and_skipped_fields_give_the_same_invoice() -> None:
    plain = decode(SPEC["features_8_14_99"])
    assert decode(SPEC["features_upper"]) == plain
    assert fields_of(decode(SPEC["ignored_fields"])) == fields_of(plain)


def test_high_s_recovery_yields_a_key_the_signature_verifies_under() -> None:
    """Independent check with `cryptography` (OpenSSL accepts high-S) on the spec's own digest."""
    invoice = decode(SPEC["high_s_recovery"])
    hrp, data = bech32.decode(SPEC["high_s_recovery"])
    signature = bytes(bech32.convert_bits(data[-104:], 5, 8, pad=False))
    signed = bytes(bech32.convert_bits(data[:-104], 5, 8, pad=True))
    digest = hashlib.sha256(hrp.encode() + signed).digest()
    assert digest.hex() == "6daf4d488be41ce7cbb487cab1ef2975e5efcea879b20d421f0ef86b07cbb987"
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), invoice.payee)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")
    assert s > SECP256K1_ORDER // 2
    der = encode_dss_signature(r, s)
    key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def test_legacy_invoice_without_payment_secret_still_decodes() -> None:
    invoice = decode(LEGACY_DONATION)
    assert invoice.payment_secret is None
    assert invoice.features == 0
    assert invoice.payee_hex == SPEC_PAYEE
    assert invoice.payment_hash_hex == SPEC_HASH.hex()


@pytest.mark.parametrize(("name", "message"), INVALID, ids=[name for name, _ in INVALID])
def test_spec_invalid_examples_are_refused_with_the_reason(name: str, message: str) -> None:
    with pytest.raises(InvoiceError, match=message):
        decode(SPEC[name])


# --- crafted invoices: signed correctly, defective in exactly one way -----------------------------

OTHER_PRIVATE_KEY = bytes.fromhex("11" * 32)


def b5(raw: bytes) -> list[int]:
    return bech32.convert_bits(raw, 8, 5, pad=True)


def digits5(value: int, count: int) -> list[int]:
    return [value >> 5 * (count - 1 - i) & 31 for i in range(count)]


def sign_raw(
    hrp: str,
    fields: list[tuple[str, list[int]]],
    *,
    tail: list[int] = (),  # type: ignore[assignment]
    key: bytes = SPEC_PRIVATE_KEY,
    recovery_id: int | None = None,
) -> str:
    """Sign arbitrary tagged fields the way the spec says, so a test can build any defect."""
    data = digits5(SPEC_TIMESTAMP, 7)
    for tag, payload in fields:
        data += [bech32.CHARSET.index(tag), len(payload) >> 5, len(payload) & 31, *payload]
    data += list(tail)
    digest = hashlib.sha256(hrp.encode() + bytes(bech32.convert_bits(data, 5, 8, pad=True))).digest()
    signature = coincurve.PrivateKey(key).sign_recoverable(digest, hasher=None)
    if recovery_id is not None:
        signature = signature[:64] + bytes([recovery_id])
    return bech32.encode(hrp, data + bech32.convert_bits(signature, 8, 5, pad=True))


def features5(*bits: int) -> list[int]:
    value = sum(1 << bit for bit in bits)
    return digits5(value, (value.bit_length() + 4) // 5)


P = ("p", b5(SPEC_HASH))
S = ("s", b5(SPEC_SECRET))
D = ("d", b5(b"25 Wh"))
H = ("h", b5(CAKE_HASH))
SECRET_FEATURES = ("9", features5(8, 14))


def test_crafting_helper_makes_invoices_that_decode() -> None:
    invoice = decode(sign_raw("lnbcrt250n", [P, S, D, SECRET_FEATURES]))
    assert (invoice.network, invoice.amount_msat, invoice.description) == ("regtest", 25_000, "25 Wh")
    assert invoice.payee_hex == SPEC_PAYEE


BAD_PADDING_HASH = b5(SPEC_HASH)[:-1] + [b5(SPEC_HASH)[-1] | 1]
BAD_POINT = b"\x02" + b"\xff" * 32

CRAFTED_DEFECTS = {
    "two payment hashes": ([P, P, S, D], r"2 `p` fields \(payment hash\)"),
    "no payment hash": ([S, D], r"no payment hash \(`p` field"),
    "only a short payment hash (skipped)": ([("p", b5(SPEC_HASH)[:51]), S, D], "no payment hash"),
    "two payment secrets": ([P, S, S, D], r"2 `s` fields"),
    "both d and h": ([P, S, D, H], "both a description"),
    "neither d nor h": ([P, S], "no description"),
    "two descriptions": ([P, S, D, D], r"2 `d` fields"),
    "description not UTF-8": ([P, S, ("d", b5(b"\xff\xfe"))], "not valid UTF-8"),
    "non-zero padding": ([("p", BAD_PADDING_HASH), S, D], r"`p` field \(payment hash\).*not zero padding"),
    "non-minimal expiry": ([P, S, D, ("x", [0, 1, 28])], r"`x` field \(expiry\) starts with a zero digit"),
    "non-minimal features": ([P, S, D, ("9", [0, *features5(8, 14)])], "`9` field .* zero digit"),
    "two expiries": ([P, S, D, ("x", [1]), ("x", [2])], r"2 `x` fields"),
    "cltv beyond 32 bits": ([P, S, D, ("c", digits5(1 << 32, 7))], "does not fit in 32 bits"),
    "unknown even feature": ([P, S, D, ("9", features5(8, 14, 20))], r"unknown required feature bit 20$"),
    "two unknown even features": ([P, S, D, ("9", features5(20, 22))], "feature bits 20, 22$"),
    "many unknown even features": (
        [P, S, D, ("9", features5(*range(100, 140, 2)))],
        "unknown required feature bits 100, 102, 104, 106, 108, 110, 112, 114 and 12 more$",
    ),
    "payment_secret feature without s": ([P, D, ("9", features5(8, 15))], "no payment secret"),
    "basic_mpp without payment_secret": ([P, S, D, ("9", features5(8, 17))], "basic_mpp .* without"),
    "route hint not whole hops": ([P, S, D, ("r", b5(bytes(50)))], "not a positive multiple of 51"),
    "route hint with a bad key": ([P, S, D, ("r", b5(BAD_POINT + bytes(18)))], "hop 0: .* not a valid"),
    "n that is not a point": ([P, S, D, ("n", b5(BAD_POINT))], "`n` field .* not a valid public key"),
    "n naming someone else": (
        [P, S, D, ("n", b5(coincurve.PrivateKey(OTHER_PRIVATE_KEY).public_key.format()))],
        "not made by the payee named in the `n` field",
    ),
}


@pytest.mark.parametrize(("fields", "message"), CRAFTED_DEFECTS.values(), ids=CRAFTED_DEFECTS.keys())
def test_crafted_defects_are_refused_with_the_reason(
    fields: list[tuple[str, list[int]]], message: str
) -> None:
    with pytest.raises(InvoiceError, match=message):
        decode(sign_raw("lnbc1m", fields))


def test_field_running_past_the_signature_is_refused() -> None:
    overrun = [bech32.CHARSET.index("d"), 0, 30, *b5(b"abc")]
    with pytest.raises(InvoiceError, match="`d` field claims 30 characters but only 5 remain"):
        decode(sign_raw("lnbc1m", [P, S, D], tail=overrun))


def test_truncated_field_header_is_refused() -> None:
    with pytest.raises(InvoiceError, match="ends inside a tagged field's header"):
        decode(sign_raw("lnbc1m", [P, S, D], tail=[13, 0]))


def test_recovery_id_outside_0_to_3_is_refused() -> None:
    with pytest.raises(InvoiceError, match="recovery id is 4"):
        decode(sign_raw("lnbc1m", [P, S, D], recovery_id=4))


def test_unknown_tags_and_odd_features_are_ignored() -> None:
    invoice = decode(sign_raw("lnbc1m", [P, S, D, ("2", [1, 2, 3]), ("9", features5(8, 14, 21, 101))]))
    assert invoice.features == 1 << 8 | 1 << 14 | 1 << 21 | 1 << 101
    assert invoice.payment_hash == SPEC_HASH


def test_n_field_naming_the_signer_is_accepted() -> None:
    invoice = decode(sign_raw("lnbc1m", [P, S, D, ("n", b5(bytes.fromhex(SPEC_PAYEE)))]))
    assert invoice.payee_hex == SPEC_PAYEE


@pytest.mark.parametrize(
    ("hrp", "network", "amount_msat"),
    [
        ("lnbc", "mainnet", None),
        ("lntb", "testnet", None),
        ("lntbs", "signet", None),
        ("lnbcrt", "regtest", None),
        ("lntb25m", "testnet", 2_500_000_000),
        ("lntbs10u", "signet", 1_000_000),
        ("lnbcrt5n", "regtest", 500),
        ("lnbc20", "mainnet", 2_000_000_000_000),
        ("lnbc10p", "mainnet", 1),
    ],
)
def test_network_and_amount_are_read_from_the_prefix(
    hrp: str, network: str, amount_msat: int | None
) -> None:
    invoice = decode(sign_raw(hrp, [P, S, D]))
    assert (invoice.network, invoice.amount_msat) == (network, amount_msat)


@pytest.mark.parametrize(
    ("hrp", "message"),
    [
        ("lnsb", "unknown network 'sb'"),
        ("lntbx25m", "unknown network 'tbx'"),
        ("bc25m", "does not start with 'ln'"),
        ("lnbc0", "amount is zero"),
        ("lnbc000u", "amount is zero"),
        ("lnbc025m", "leading zero"),
        ("lnbc25mm", "not a number followed by an optional multiplier"),
        ("lnbc2.5m", "not a number followed by an optional multiplier"),
        ("lnbc" + "9" * 21 + "p", "more than all bitcoin"),
        ("lnbc21000001", "more than all bitcoin"),
        ("lnbc25p", "sub-millisatoshi precision"),
    ],
)
def test_bad_prefixes_and_amounts_are_refused(hrp: str, message: str) -> None:
    with pytest.raises(InvoiceError, match=message):
        decode(sign_raw(hrp, [P, S, D]))


def test_non_text_is_refused() -> None:
    with pytest.raises(InvoiceError, match="an invoice is text, not bytes"):
        decode(SPEC["donation"].encode())  # type: ignore[arg-type]


def test_expiry_is_counted_from_the_timestamp() -> None:
    invoice = decode(SPEC["coffee"])
    assert invoice.expires_at == SPEC_TIMESTAMP + 60
    assert not invoice.is_expired(SPEC_TIMESTAMP + 59.9)
    assert invoice.is_expired(SPEC_TIMESTAMP + 60)


# --- encode -------------------------------------------------------------------------------------

SPEC_ENCODE_ARGS = dict(
    network="mainnet",
    payment_hash=SPEC_HASH,
    private_key=SPEC_PRIVATE_KEY,
    payment_secret=SPEC_SECRET,
    timestamp=SPEC_TIMESTAMP,
    features=SPEC_FEATURES,
)


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("donation", dict(amount_msat=None, description="Please consider supporting this project")),
        ("coffee", dict(amount_msat=250_000_000, description="1 cup coffee", expiry=60)),
        ("nonsense", dict(amount_msat=250_000_000, description="ナンセンス 1杯", expiry=60)),
        ("hashed", dict(amount_msat=2_000_000_000, description_hash=CAKE_HASH)),
    ],
)
def test_encode_reproduces_the_spec_examples_exactly(name: str, arguments: dict[str, object]) -> None:
    assert encode(**SPEC_ENCODE_ARGS, **arguments) == SPEC[name]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount_msat", "hrp"),
    [
        (250_000_000, "lnbc2500u"),
        (2_000_000_000, "lnbc20m"),
        (100_000_000_000, "lnbc1"),
        (150_000_000_000, "lnbc1500m"),
        (1_000, "lnbc10n"),
        (100, "lnbc1n"),
        (1, "lnbc10p"),
        (967_878_534, "lnbc9678785340p"),
        (MAX_AMOUNT_MSAT, "lnbc21000000"),
    ],
)
def test_encode_uses_the_shortest_exact_amount(amount_msat: int, hrp: str) -> None:
    arguments = {**SPEC_ENCODE_ARGS, "amount_msat": amount_msat, "description": "x"}
    text = encode(**arguments)  # type: ignore[arg-type]
    assert text.startswith(hrp + "1")
    assert decode(text).amount_msat == amount_msat


def test_encode_default_features_follow_lnd() -> None:
    arguments = {**SPEC_ENCODE_ARGS, "amount_msat": 25_000, "description": "25 Wh"}
    del arguments["features"]
    assert decode(encode(**arguments)).features == 1 << 8 | 1 << 14 | 1 << 17  # type: ignore[arg-type]
    arguments["payment_secret"] = None
    assert decode(encode(**arguments)).features == 0  # type: ignore[arg-type]


def test_encode_names_the_payee_when_asked() -> None:
    arguments = {**SPEC_ENCODE_ARGS, "amount_msat": 25_000, "description": "25 Wh"}
    without = encode(**arguments)  # type: ignore[arg-type]
    with_payee = encode(**arguments, include_payee=True)  # type: ignore[arg-type]
    assert "np4" + "".join(bech32.CHARSET[d] for d in b5(bytes.fromhex(SPEC_PAYEE))) in with_payee
    assert len(with_payee) == len(without) + 3 + 53
    assert decode(with_payee).payee_hex == SPEC_PAYEE


def test_encode_accepts_the_longest_description() -> None:
    description = "€" * 213  # 639 UTF-8 bytes, the most one field holds
    arguments = {**SPEC_ENCODE_ARGS, "amount_msat": 1, "description": description}
    assert decode(encode(**arguments)).description == description  # type: ignore[arg-type]


HOP = RouteHop(bytes.fromhex(SPEC_PAYEE), 1, 2, 3, 4)
ENCODE_REFUSALS = {
    "unknown network": ({"network": "litecoin"}, "unknown network 'litecoin'"),
    "zero amount": ({"amount_msat": 0}, "amount_msat must be an int from 1"),
    "amount above all bitcoin": ({"amount_msat": MAX_AMOUNT_MSAT + 1}, "amount_msat must be an int from 1"),
    "float amount": ({"amount_msat": 1.0}, "amount_msat must be an int"),
    "zero private key": ({"private_key": bytes(32)}, "private_key is not a valid secp256k1 secret"),
    "short private key": ({"private_key": bytes(31)}, "private_key must be 32 bytes"),
    "short payment hash": ({"payment_hash": bytes(31)}, "payment_hash must be 32 bytes"),
    "description and hash": ({"description_hash": CAKE_HASH}, "exactly one of description and"),
    "no description": ({"description": None}, "exactly one of description and description_hash"),
    "description too long": ({"description": "x" * 640}, "more than the 1023 a field can hold"),
    "payment_secret feature without secret": ({"payment_secret": None}, "no payment secret"),
    "unknown even feature": ({"features": 1 << 8 | 1 << 14 | 1 << 40}, "unknown required feature bit 40"),
    "timestamp beyond 35 bits": ({"timestamp": 1 << 35}, "timestamp must be an int from 0"),
    "negative expiry": ({"expiry": -1}, "expiry must be an int from 0"),
    "empty route hint": ({"route_hints": [[]]}, "route hint 0 has 0 hops"),
    "too many hops": ({"route_hints": [[HOP] * 13]}, "route hint 0 has 13 hops; it needs 1 to 12"),
    "hop fee beyond 32 bits": ({"route_hints": [[RouteHop(HOP.pubkey, 1, 1 << 32, 3, 4)]]}, "fee_base_msat"),
    "hop with a bad key": ({"route_hints": [[RouteHop(BAD_POINT, 1, 2, 3, 4)]]}, "not a valid public key"),
}


@pytest.mark.parametrize(("changes", "message"), ENCODE_REFUSALS.values(), ids=ENCODE_REFUSALS.keys())
def test_encode_refuses_what_decode_would_refuse(changes: dict[str, object], message: str) -> None:
    arguments = {**SPEC_ENCODE_ARGS, "amount_msat": 1000, "description": "25 Wh", **changes}
    with pytest.raises(InvoiceError, match=message):
        encode(**arguments)  # type: ignore[arg-type]


# --- properties -----------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
HOP_KEYS = [coincurve.PrivateKey(bytes([n]) * 32).public_key.format() for n in range(1, 9)]
ODD_BITS = sum(1 << bit for bit in range(1, 160, 2))

private_keys = st.integers(1, SECP256K1_ORDER - 1).map(lambda n: n.to_bytes(32, "big"))
hops = st.builds(
    RouteHop,
    pubkey=st.sampled_from(HOP_KEYS),
    short_channel_id=st.integers(0, (1 << 64) - 1),
    fee_base_msat=st.integers(0, (1 << 32) - 1),
    fee_ppm=st.integers(0, (1 << 32) - 1),
    cltv_delta=st.integers(0, (1 << 16) - 1),
)


@st.composite
def invoice_arguments(draw: st.DrawFn) -> dict[str, object]:
    payment_secret = draw(st.none() | st.binary(min_size=32, max_size=32))
    features = draw(st.none() | st.integers(0, 1 << 160).map(lambda bits: bits & ODD_BITS))
    if features is not None:
        for bit in draw(st.sets(st.sampled_from([8, 14, 16]))):
            features |= 1 << bit
        if payment_secret is None:
            features &= ~(0b1111 << 14)
        elif features >> 16 & 0b11:
            features |= 1 << 15
    use_hash = draw(st.booleans())
    return dict(
        network=draw(st.sampled_from(sorted(NETWORK_PREFIXES.values()))),
        amount_msat=draw(st.none() | st.integers(1, MAX_AMOUNT_MSAT)),
        payment_hash=draw(st.binary(min_size=32, max_size=32)),
        private_key=draw(private_keys),
        payment_secret=payment_secret,
        description=None if use_hash else draw(st.text(max_size=150)),
        description_hash=draw(st.binary(min_size=32, max_size=32)) if use_hash else None,
        expiry=draw(st.integers(0, (1 << 64) - 1) | st.just(3600)),
        timestamp=draw(st.integers(0, (1 << 35) - 1)),
        min_final_cltv_expiry=draw(st.integers(0, (1 << 32) - 1) | st.just(18)),
        features=features,
        route_hints=draw(st.lists(st.lists(hops, min_size=1, max_size=3), max_size=2)),
        include_payee=draw(st.booleans()),
    )


@PROPERTY_SETTINGS
@given(invoice_arguments())
def test_encode_then_decode_gives_back_every_field(arguments: dict[str, object]) -> None:
    text = encode(**arguments)  # type: ignore[arg-type]
    invoice = decode(text)
    expected_features = arguments["features"]
    if expected_features is None:
        expected_features = 1 << 8 | 1 << 14 | 1 << 17 if arguments["payment_secret"] is not None else 0
    assert invoice.raw == text
    assert invoice.network == arguments["network"]
    assert invoice.amount_msat == arguments["amount_msat"]
    assert invoice.payment_hash == arguments["payment_hash"]
    assert invoice.payment_secret == arguments["payment_secret"]
    assert invoice.description == arguments["description"]
    assert invoice.description_hash == arguments["description_hash"]
    assert invoice.expiry == arguments["expiry"]
    assert invoice.timestamp == arguments["timestamp"]
    assert invoice.min_final_cltv_expiry == arguments["min_final_cltv_expiry"]
    assert invoice.features == expected_features
    hints = arguments["route_hints"]
    assert invoice.route_hints == tuple(tuple(hint) for hint in hints)  # type: ignore[attr-defined]
    signer = coincurve.PrivateKey(arguments["private_key"])  # type: ignore[arg-type]
    assert invoice.payee == signer.public_key.format()
    assert decode(text.upper()) == invoice


FLIP_CHARACTERS = st.characters(codec="utf-8") | st.sampled_from(string.ascii_letters + string.digits)


@PROPERTY_SETTINGS
@given(st.data(), invoice_arguments())
def test_changing_any_one_character_makes_decode_refuse(
    data: st.DataObject, arguments: dict[str, object]
) -> None:
    encoded = encode(**arguments)  # type: ignore[arg-type]
    text = data.draw(st.sampled_from([SPEC[name] for name, _ in VALID] + [encoded]))
    position = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(FLIP_CHARACTERS.filter(lambda c: c != text[position]))
    with pytest.raises(InvoiceError):
        decode(text[:position] + replacement + text[position + 1 :])


@PROPERTY_SETTINGS
@given(st.text())
def test_random_text_is_refused_with_invoice_error(text: str) -> None:
    with pytest.raises(InvoiceError):
        decode(text)


@PROPERTY_SETTINGS
@given(
    st.text(alphabet="lnbctrs0123456789munpx", max_size=12),
    st.lists(st.integers(0, 31), max_size=400),
)
def test_random_bech32_with_a_valid_checksum_is_refused_with_invoice_error(
    hrp: str, data: list[int]
) -> None:
    with pytest.raises(InvoiceError):
        decode(bech32.encode(hrp, data))


FIVE_BITS = st.integers(0, 31)


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from("xcr9nsh") | st.sampled_from(bech32.CHARSET),
            st.lists(FIVE_BITS, max_size=60) | st.lists(FIVE_BITS, min_size=52, max_size=53),
        ),
        max_size=6,
    ),
    st.sampled_from(["lnbc", "lntbs1u", "lnbcrt250n"]),
)
def test_signed_random_fields_decode_only_to_the_signer_or_are_refused(
    fields: list[tuple[str, list[int]]], hrp: str
) -> None:
    """Well-signed nonsense reaches the field parser; it must refuse cleanly or name the signer."""
    text = sign_raw(hrp, [P, D, *fields])
    try:
        invoice = decode(text)
    except InvoiceError:
        return
    assert invoice.payee_hex == SPEC_PAYEE
    assert invoice.raw == text
