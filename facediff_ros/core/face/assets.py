"""ICT-FaceKit Light asset: find the upstream files, verify them, convert them into a cache.

The upstream model (MIT licence, Copyright (c) 2020 USC Institute for Creative Technologies) is
read from one of, in this order:

1. ``$ICT_FACEKIT_DIR`` -- an unpacked upstream folder (holding ``FaceXModel/``) or an archive of it;
2. ``<repository>/../shared/assets/ict-facekit`` -- the project's copy of the upstream archive;
3. a download of the upstream archive at :data:`ICT_COMMIT` (needs internet).

Every file used is checked against :data:`FILE_SHA256` (per file, never the archive, so a
differently packed archive of the same commit is accepted). The OBJs are parsed by
:func:`read_obj` and written as one compressed ``model.npz`` in the cache directory
(``$FACEDIFF_CACHE_DIR`` or ``$XDG_CACHE_HOME/facediff_ros``, default ``~/.cache/facediff_ros``),
with the upstream LICENSE and a manifest beside it. Nothing here is committed to git.

Units in the cache are the upstream ones (centimetres, ICT model frame: y up, face towards +z);
:mod:`facediff_ros.core.face.morphable_model` converts to metres and the optical convention.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

ICT_REPO = "ICT-VGL/ICT-FaceKit"
ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ICT_ARCHIVE_URL = f"https://codeload.github.com/{ICT_REPO}/tar.gz/{ICT_COMMIT}"
# Bump when the cache layout changes, so old caches are rebuilt rather than misread.
CACHE_FORMAT = 1
CACHE_NAME = f"ict-facekit-{ICT_COMMIT[:8]}-v{CACHE_FORMAT}"

NUM_IDENTITIES = 100

# sha256 of every upstream file the package uses, at ICT_COMMIT (paths relative to the
# repository root). Generated once from the upstream archive; a mismatch means an altered or
# different release of the model.
FILE_SHA256: Dict[str, str] = {
    "FaceXModel/generic_neutral_mesh.obj": "eedbc2576d8e5ea57f55255b8f98263213a1efb5431d8bfceed1d7aef10271f9",
    "FaceXModel/vertex_indices.json": "4f9b35306299980dd46bee4a6b79bb95dfae1953693b74b35a64f7febfd081a5",
    "LICENSE": "b20a78d8fc51657e14f3e00c8abb538d786ad00aa63210328c22565e583167e1",
    "FaceXModel/identity000.obj": "918160cf82d541336b4c367cf93199c9827832bde02511b8fbdf9019d6f1a773",
    "FaceXModel/identity001.obj": "325115059deb6691cb2d55da07ae38bb08ce36e4ea146982f294a17513155b3b",
    "FaceXModel/identity002.obj": "e140e8305cd5232def3b94331d08450a13f312e525130fca8eeaa653231decc3",
    "FaceXModel/identity003.obj": "be3481a6bed8953a6d9dd7f811a04bc6d2ab94d1bd76ecfaa6d4cae87a450f9d",
    "FaceXModel/identity004.obj": "a2f411cc763e881cff250eb23c04fe8375b63a05a7dfa0492422e3b943e8a01d",
    "FaceXModel/identity005.obj": "274178eb33e33c555e6024535a51a62ee50050abd4f7014bbc7a4dc90a638c65",
    "FaceXModel/identity006.obj": "c9ae0426ab88b49065c852148f7bcff8cb09253fbee068b78955bd76c19a3e0f",
    "FaceXModel/identity007.obj": "ba38037151277b94e2b6b9b9800275d92d2c0aa8d61057b0718c9d7b90fffc44",
    "FaceXModel/identity008.obj": "b03543b783a15c1d28c5a384cd93657eda915227756780f682bc7370cd94ce1d",
    "FaceXModel/identity009.obj": "0cbb5ca5db9c61fa91df8d1c04b9b383b40d797032ca3f5a28a234d495e31b54",
    "FaceXModel/identity010.obj": "7bd1c31b76428cfb4bf29a2ac38bc2711d8c254aec25bba7ebd7a9b7dc81ebc7",
    "FaceXModel/identity011.obj": "68684bafa7e460ce7dd69c618a260143e6ecfa1254d0d49ec40202092a4b05f3",
    "FaceXModel/identity012.obj": "b899f17f8727b903b36f9a879ec95427c4df93d415956a211745bf44ed2be2dd",
    "FaceXModel/identity013.obj": "57a17eb9945a21c0a869dca4401964742c8d47e512d680fef94447aff826abc3",
    "FaceXModel/identity014.obj": "8a1a490f6e695c9116b820a95137823282415fb20bb0362725bedf0a1c2d8bd3",
    "FaceXModel/identity015.obj": "9f3da084848efabf5b898f72d3006db7442497a560185483358a8d4aefb8ac2d",
    "FaceXModel/identity016.obj": "184d17ffd35e7796777bf6008e0f904810e3781b46b37f37f9a550f1969c2525",
    "FaceXModel/identity017.obj": "5b55b7a104f561d5df44a9d0249f21bcf80890dd59666d777c2db9eccd128759",
    "FaceXModel/identity018.obj": "8ae8dd9cb5c7173f49643974420261f10f0437a7636531a50c2ae9a2badaf9a3",
    "FaceXModel/identity019.obj": "a22d531cddb3a0aaed12e6feddf45993f73545253d35642300dc4eca6438117a",
    "FaceXModel/identity020.obj": "3cabf614779ef2e625dfd4323a8db70a174e80e20aa083cd4cd3310503a66f1d",
    "FaceXModel/identity021.obj": "9ab18156977d76b6651868c68ddf5e3da529678606c9cc451cefe1bbc29cd4e5",
    "FaceXModel/identity022.obj": "6d6d1fb2c7af1d8bf14b65c2f60aa3312b3c6ad5c5315218559f3f9dd16f4f73",
    "FaceXModel/identity023.obj": "8b0e809b2b07c36eefaf5a4e6be9efed0ac0e3a8d1cc84130f112e12b188b457",
    "FaceXModel/identity024.obj": "23f6b0c1ffa4395aae606a199aa29be6b10800e46fd05c804b5a79fd87f718ff",
    "FaceXModel/identity025.obj": "93089be89ad88e7fe701dad51b07ecfa7eddfa81afaf13e27976bf97cc43a000",
    "FaceXModel/identity026.obj": "66c02f3e68e7e298b5e0938003df67a804bf0b153342acaa9ec19e63a7043896",
    "FaceXModel/identity027.obj": "d652ae8402706cd0eafa78b3745dea8435c496ca8585fe7300718e992b8fe690",
    "FaceXModel/identity028.obj": "9857adc057878d3d6f54a058e373a4ce471f77ccd49497008e2700c9d89e3d98",
    "FaceXModel/identity029.obj": "cf5c15dcf37e3d8973be8c86696894d1a8f902ba80cca28d3fda5cff87a70f09",
    "FaceXModel/identity030.obj": "ed70813c94cbbbf57b417016c760f2da44406da63d2b4bbbf8eb55711478c75c",
    "FaceXModel/identity031.obj": "c45f199b1e6dca582513863acb625ed1e2b61b5646098cc29d042db071e57ef2",
    "FaceXModel/identity032.obj": "b15d9d537ac8bf0408f321dc16fdd825fb1f52eb771e0d5201f75c02c94301c6",
    "FaceXModel/identity033.obj": "3dec9b7de7830d43eb7e7239469c07b0d02a7a61614565ae880182411a3931fb",
    "FaceXModel/identity034.obj": "bdef7f09c2bd200e026eeaceec519683033d6967ec831e0f32a1d1fcadd47ae1",
    "FaceXModel/identity035.obj": "f3ada8ae8bc42a604835d3752d6ac7d30d71652ea459560f9b8e528ae1e611df",
    "FaceXModel/identity036.obj": "e18ae8cfc06d376584f9b12fc2dd6535f3784c37128b66ae49ec0bdc53babfa6",
    "FaceXModel/identity037.obj": "e2a78ab5ea24dc03a2369e86086afca681373e7a33e84490a63749f54aae8f5f",
    "FaceXModel/identity038.obj": "37080e0e0aef74921514d4fe6e4d9054fd49b317ab328bfed9ecf4452c8d39ab",
    "FaceXModel/identity039.obj": "bc1e7dc17ea65e0acd7cec7a54c4fb16fbd1a15982c5eda853d4a409850da3b5",
    "FaceXModel/identity040.obj": "904a520b80658b1a58605109d2a1a0ec765e326afa63a6b57ccdb7b37178fdeb",
    "FaceXModel/identity041.obj": "b38ac35811e8ce84b517bbcc6769754004adae0207f25067c111f290a5f3283e",
    "FaceXModel/identity042.obj": "19f9dcb5fdc1a29da1f61a86c00b2e5d29b6649d13bfe88ec9d737424b464cda",
    "FaceXModel/identity043.obj": "65fbc36dfb2a3ebe9a77d2f895d0342e8537a9d8c61d202c3feef27d442c995c",
    "FaceXModel/identity044.obj": "d1f69e1a428a9d68a536e53b65fc62db14f70feaadf2dd1374949a2e728aa543",
    "FaceXModel/identity045.obj": "322357988af125bcf58141e4a90a3c1a475c0271013a2326e6ad610188415d2d",
    "FaceXModel/identity046.obj": "694d4f4d4f4700f7e2c97cdc26f343259298328434943664f33616c699d93bc7",
    "FaceXModel/identity047.obj": "1c7e6758628334115ceca708def3151e4e7d0a7641d67579d939c0d71b99aa92",
    "FaceXModel/identity048.obj": "a75dcc8e295d06ef9df565dc1acb4bf6e0829963d552c9138587b141c8514958",
    "FaceXModel/identity049.obj": "bd7238c27895a311f2b743535b3026d911a65039a858de89cc76f1922cabf21a",
    "FaceXModel/identity050.obj": "8549f4a4a884cce460605acc2e1b0b3273759f38ae79eeb5712e4c14fe9e959f",
    "FaceXModel/identity051.obj": "82dc080a3e3db45e916425305e9b4394046c4c4473f0bab7871720a69084a08e",
    "FaceXModel/identity052.obj": "fbab456a6d5e24f9c51a5fb184775af67a39b5795588aef32dc486b1199d1a78",
    "FaceXModel/identity053.obj": "3b43055487765ffbf6382bbcbe4715ce67e318fab131365fb300b9253426f174",
    "FaceXModel/identity054.obj": "f3ca0b1e431571cf42f66ccfd214f9a7da7d202ca3543c762ce71be3f1a09ac1",
    "FaceXModel/identity055.obj": "2541899c09da268e71a6f016b549e61ca24d2f4155d118b523b0556ec9102b86",
    "FaceXModel/identity056.obj": "f2efa2690a737fe4ea1e722dc0c2dfe0befbbf847a0feba37bc8c364ae1cf11c",
    "FaceXModel/identity057.obj": "054ce6afa96c165b738c83e3a06beb21b8dd6cb2df6a3c110627878b09ff006c",
    "FaceXModel/identity058.obj": "d6c74d031636be8474e1ec2476095df688618e805cc4a561f08dd771761f0620",
    "FaceXModel/identity059.obj": "9c1686ae731f54d4935a231e411fc1e42d118024bf9a66806586df4ffa8cf17e",
    "FaceXModel/identity060.obj": "636639e54c07651bd47d9f5835204c7416f04c06272620cfda388225ce4acf95",
    "FaceXModel/identity061.obj": "be397c552e36997db58de5201f7eafee4e2727b010e34e200e721ff99d42f91f",
    "FaceXModel/identity062.obj": "19fcb3c4fcf199fdea44a88c1785c5c319242e0a5b0440e7bf9633473dec888f",
    "FaceXModel/identity063.obj": "cea787322714ae932330808d377bf65d5f4da7346a4727767e5f6c0461a84a87",
    "FaceXModel/identity064.obj": "af88254d5c5787c63b9a69310c7cad1ed9bf9205411652e4aea785b7ea82b7ae",
    "FaceXModel/identity065.obj": "8f3ba630ce276a87c65c6302cecd9352a57e80a24240be2786464384e39babbe",
    "FaceXModel/identity066.obj": "010a5fc1bd8e5b3cc9631a6233fb7019edfb5390f8216bddda04b62cf7977046",
    "FaceXModel/identity067.obj": "e9e831aacd500e9d0761b51e4d32ed5b82c75219006e62d8b7f7f566ebe66927",
    "FaceXModel/identity068.obj": "d5a2214066683dc2140e277b8d6089814f1a80b6dbf8a7c6f9792c34d709fed7",
    "FaceXModel/identity069.obj": "419c78440217fc4b2c0f130718536f2c1ef4ffc4710e4fa7367a680bbf78ed19",
    "FaceXModel/identity070.obj": "d04d9686c1c69754d9c0e7bc09acf720b93e9496daf5502aacdae12442d88329",
    "FaceXModel/identity071.obj": "42a5429e4e780550067662273284aa42fb17fd8be47b1abf8b6039e50202e5e7",
    "FaceXModel/identity072.obj": "3f60cf1c31d8fa72f5fe6e1e4bf52862a18b851ab1538a4c925b6d38cf91a2ed",
    "FaceXModel/identity073.obj": "916087dc9a8e28f19170f826b8071f5b2baa3ec8ba468a42f0880e6ed4427ba5",
    "FaceXModel/identity074.obj": "c8120bc13eb35de329c2d0c206b5f86c4df4a07e1d36987a05e56cd8a5301316",
    "FaceXModel/identity075.obj": "fe7678ed6e903b01b52d977eed4dcfcfa2e9ac5b4ae7949cc3a40249cebe3e0e",
    "FaceXModel/identity076.obj": "f059cbad69acbd5d21f149c362df502165ac2edc234633c9f951d7ee16c18e44",
    "FaceXModel/identity077.obj": "7d82c57e39e1f2e999e78f19a07ff7a407bdc1b22505b9519c26b54ec0d71bfb",
    "FaceXModel/identity078.obj": "6e18e072ff5718950c215e13434599e21d89cc4ad419aeba9a8988682d051d08",
    "FaceXModel/identity079.obj": "c78769be8238c1e6efa21c84a6149953b10ccc00be67028edf9c345ffde4c53d",
    "FaceXModel/identity080.obj": "c24276693121f87bc47ffd081e4ea624136b7a9ee6186f8a1d4dd79c2c7fb25d",
    "FaceXModel/identity081.obj": "ac84f6861264e7c8bbcd86a1bbc86e5d3ce1d9cdd98adff8ffef6a13e33986fb",
    "FaceXModel/identity082.obj": "33d75dd5d86812bfa22f2360383f25a6ecac69be32ef07a6dedbf28c0433c98e",
    "FaceXModel/identity083.obj": "6bbee0dfed711aa2336ae7614d821752d02e338da45d6f726f2cef1810699e87",
    "FaceXModel/identity084.obj": "7db8e5df79cf7442c232a9184f04feebfb3618e48fcd2c348907a04e7b4485ad",
    "FaceXModel/identity085.obj": "154f0743e1522e1c7f2b9b19cfb31dbc6fc0eadc46188c7097c2045864c81433",
    "FaceXModel/identity086.obj": "c1b7da51297b6cf036cc30585bcc12db6ad00783823657cc7bc7472d98adbf68",
    "FaceXModel/identity087.obj": "d5f123616f1628cfb1cf52faae2a8982d1533c8bf99282e219b682f27260382f",
    "FaceXModel/identity088.obj": "82bb4bdc9c4870ee984327a57cc8b62dce704093dbab3e4270afb8112aaef116",
    "FaceXModel/identity089.obj": "2d462a9844362cbf66b63794555b7aa63353daeec57960f2503540d7b3983e62",
    "FaceXModel/identity090.obj": "05baa39fa4ed9378680b2ad9636facf0f18045bfc1fb2c437e85b9035fd2d3ef",
    "FaceXModel/identity091.obj": "562e6c2e0f5fef6e8bba81c1049adef1d03cf01c55123029e3edcba861d91121",
    "FaceXModel/identity092.obj": "a7ee20c22ba7be28de2eef5878a43decc65b9c215d4087188b690a87201e9103",
    "FaceXModel/identity093.obj": "f7372bd3d4d7b1a107cb2fcc253b10deab0659d39ee1a883ac6352da5ee740ab",
    "FaceXModel/identity094.obj": "ea34d4dcf1934141d6a24fe5fc97c97621e6c2fd36c608b7031d074ab866568b",
    "FaceXModel/identity095.obj": "1ebee650c4db2b4b84fb0f677a1e3f72a565081524813f1c664d8c76367fa4c8",
    "FaceXModel/identity096.obj": "1192407c0209709e6c8edd8dfd6e6d663d471f95a379f83ffc4bae47983d4bfa",
    "FaceXModel/identity097.obj": "a3ba3be2427e8882eacaf658eb6e5781bcfa551bd743ffc753481d3b8bd58845",
    "FaceXModel/identity098.obj": "b8a13585231b382c6d8bb5dd96cd4de5fa5542a8981d4cd63fe39f1c251a5b90",
    "FaceXModel/identity099.obj": "6294bbed0197a06d091d1ad9f586c5f8d90fce4f580350a509749ae688472912",
    "FaceXModel/browDown_L.obj": "d1dcd14fc085a9e258dec62a4bfe4a31d592cce5d8918a3892c20f480653f4c1",
    "FaceXModel/browDown_R.obj": "66a2c72ab64999af168795f27182d011f52b90958c402d719d3ec8ff7d1c8939",
    "FaceXModel/browInnerUp_L.obj": "81fb1625794ea36fb13303234ce06cef798acfdbc489077e22ae195a705bc92e",
    "FaceXModel/browInnerUp_R.obj": "5e66b46cdad89fd1237273db2b885511688cf37636cedfdde432a4844c9109e7",
    "FaceXModel/browOuterUp_L.obj": "022d5342687e51351f4cad6dd1abd42c3bb1b752d0b235bdc7fc588ab0d79c90",
    "FaceXModel/browOuterUp_R.obj": "1e4722060538b274ed49ed872525d770b5bfd9262b7bce1b6310f49356f5b531",
    "FaceXModel/cheekPuff_L.obj": "f53fd2bdeb8e26d0db8a684ab9c095c6bb113b74575dec329facae2799ff18c6",
    "FaceXModel/cheekPuff_R.obj": "cd5b5d0f3a653a1fa31abeb65daf8fd6ffdf83a4d1bf22333a469b13b96fa801",
    "FaceXModel/cheekSquint_L.obj": "572fe87f2e0cdd0a7ff868b9173d0ff08ee2bc73bf94c17b603f6e5d5b8fbe26",
    "FaceXModel/cheekSquint_R.obj": "a9afa0aac432159e89eb54dbbb3139864b8cc1c4208c3c0e9c420d0d8050b99a",
    "FaceXModel/eyeBlink_L.obj": "f5ed1c3072a400083b7d4f7f5cb3d73882b7ebb95c3232f957394db8cf7fe19e",
    "FaceXModel/eyeBlink_R.obj": "d281ad0af03e89a70abf1214d52c295b3a279c9b35f6795938c4487f467ca003",
    "FaceXModel/eyeLookDown_L.obj": "e7da4fa6509af5da25fab1a34255889a68f06b90fd37f65c6c05e5bdbbe2f755",
    "FaceXModel/eyeLookDown_R.obj": "ac466de6decf619701f3ee7f80fa7371020d325084b41ad7f4b2840e232abf83",
    "FaceXModel/eyeLookIn_L.obj": "1e037332bc059a95d05fcb24728ae297a2d4d268ff0cf623d3647d2a4f86bd31",
    "FaceXModel/eyeLookIn_R.obj": "3d64db0e51ad28e76eff56217da401c5ee563b5e76a207cb192046465bbab14a",
    "FaceXModel/eyeLookOut_L.obj": "235739695136c40b7a2c3239a100ff75b7bfc271ae195aeb55330848c999c9c8",
    "FaceXModel/eyeLookOut_R.obj": "ac10dfa83ccaca7fd76fe96d74f8cbc80582e2ef914d1092827b54f88125650e",
    "FaceXModel/eyeLookUp_L.obj": "72ed342df43489a76e9d468df3ca7f48328f41c924af0c03d88fde9905d82848",
    "FaceXModel/eyeLookUp_R.obj": "d8ade1cab9f7f0c4ef6ec007f33e9c9df90a58c666b9aac5a784192cd389e899",
    "FaceXModel/eyeSquint_L.obj": "ecb8244f083cf55fa9f0277427b8213315176a624d9ac3a09b533c7fbc68917e",
    "FaceXModel/eyeSquint_R.obj": "0dffbbc651b9cdbc346ead32ba102051200c72ed8a93e7b33f07149e18390b8a",
    "FaceXModel/eyeWide_L.obj": "015a995b0f09783683f5575af7e4c939cd758d194d7ca2e8ffacb9ddbabf0078",
    "FaceXModel/eyeWide_R.obj": "4b8207f6013a751ae35affba62cc70bd6b53e046bbe48e8fd5a150450a7789ed",
    "FaceXModel/jawForward.obj": "a0126b2926b69540f478e4c48f05e370868050e6c33718e53c2f17e190a3b239",
    "FaceXModel/jawLeft.obj": "5af90cd941660fb0116948866414e4321035de754b7ebec787f8144445d2d9e9",
    "FaceXModel/jawOpen.obj": "8d84355e10f48b05550980cee385bcd426f4797090da76a20de0535bb2f99f4a",
    "FaceXModel/jawRight.obj": "d719335ad69a8f18797501d4728910c7a467aecbbae260923192b1bf242eec97",
    "FaceXModel/mouthClose.obj": "4a44b94c269407cf1171483d87d99d2cbdea9c66242aabf2ad0f57cb785aa193",
    "FaceXModel/mouthDimple_L.obj": "189f6e01adbf1e13147fe4d505d1f3006e5ce4590ae150064b810274093d29b0",
    "FaceXModel/mouthDimple_R.obj": "4cf674b98d6d34a16fab462fbd9ecb2cb5e39ccaf3f50459b9ac7d59fbd6a215",
    "FaceXModel/mouthFrown_L.obj": "1bfd720ad024e5805ac8472df170c2c96c09e817e02b66f916057d6e2d31ee9b",
    "FaceXModel/mouthFrown_R.obj": "ae3da92fa1dc70010c6bec810338d740287c71b8730694c97876cab5af241f74",
    "FaceXModel/mouthFunnel.obj": "d4f1dba04c1af5fc37452c88cc54a72f1133296c26d9abe0f8adb74dc5c2577f",
    "FaceXModel/mouthLeft.obj": "01fb69aa8ac07c5762719c9bb2eec5372652c9f1e73509a63d01e7e60e28b885",
    "FaceXModel/mouthLowerDown_L.obj": "8847660d51e2a72f2bce6ce9add7d58abab1cef967420db83056891291c0b2de",
    "FaceXModel/mouthLowerDown_R.obj": "b5143ed50d41c91d80ddc8b565f6274eaf514509ec6f895797db34ca92a85b68",
    "FaceXModel/mouthPress_L.obj": "de2bdaf2fa7199294ff7a281cd8f6647bf5ca9a6f84588bd7f7779fff4c61396",
    "FaceXModel/mouthPress_R.obj": "ca8d9973b3231e51b8b76d3e7af7f7f3432959b7c37148fc25e7c643252847b6",
    "FaceXModel/mouthPucker.obj": "9929c31025667683809f70df7dce612f72e3acfc7f9e8acb939f6636509dbc5c",
    "FaceXModel/mouthRight.obj": "e3faaf5ed51715e77122d76e8187d5ba83ea9f54e15e29c52e64f26c52e66bda",
    "FaceXModel/mouthRollLower.obj": "1f577e1129eef4f9e9dc26aa739c6d0f15b27253dee89af3428db6816666e910",
    "FaceXModel/mouthRollUpper.obj": "a69ec7407adfd6a5f4c818179bb4604d9e506c07671976f75ac33ef8f54a1bb0",
    "FaceXModel/mouthShrugLower.obj": "1eedd7831b0408bdcbc9aefe23b11803c54f81da5fc9be1fe81fc7a5117c0b88",
    "FaceXModel/mouthShrugUpper.obj": "2bd3e3f1568366f2fd84717f0f63aee9f56eed4c303fc4f234aadd81d430032c",
    "FaceXModel/mouthSmile_L.obj": "91794e73cef330f1c7d1f4541723544708536b39d5dd6ed35fd8f83f676b7af4",
    "FaceXModel/mouthSmile_R.obj": "3fb3de3da9f8358edbb933a65ce6e44c25a2501f30dcb240daea725b68adac84",
    "FaceXModel/mouthStretch_L.obj": "9187105730bad43023c63e2a91c979091b9289dd8fc1b587885412b8f7a3d2b7",
    "FaceXModel/mouthStretch_R.obj": "d985452085a19d6b3da397ca2cd2f938d8e08761d2e684e87640f3639bdf5f6d",
    "FaceXModel/mouthUpperUp_L.obj": "d49483aca6cbbb7a559edf4865aec62970560ddf3a0d34e5b208488bff59f722",
    "FaceXModel/mouthUpperUp_R.obj": "299e3da0f36ca80c0c74e51900b67bfe6bb5b0101aaf46ce30075064c26a7f02",
    "FaceXModel/noseSneer_L.obj": "47c5d66ddc1ba146480f0e43b1084f439e0e7d2af31bcec3e6a3bffc420ffa4d",
    "FaceXModel/noseSneer_R.obj": "c384c41331124b9cd4b99c1bbe8aef56318cae2b8db6ff0f573a7347ebbe8caa",
}

NEUTRAL_OBJ = "FaceXModel/generic_neutral_mesh.obj"
VERTEX_INDICES_JSON = "FaceXModel/vertex_indices.json"
LICENSE_FILE = "LICENSE"


class AssetError(RuntimeError):
    """The face-model asset is missing, altered or unreadable; the message says what to do."""


# --------------------------------------------------------------------------------------------
# OBJ reading
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjMesh:
    """A polygon mesh as read from a Wavefront OBJ.

    Attributes:
        vertices: (V, 3) float64 positions, in the file's units.
        uvs: (T, 2) float64 texture coordinates (``vt``), u right, v up as in OBJ.
        face_vertices: (K,) int32 0-based vertex indices of all polygons, concatenated.
        face_uvs: (K,) int32 0-based ``vt`` indices matching ``face_vertices`` (-1 where absent).
        face_offsets: (F + 1,) int64; polygon f uses entries ``face_offsets[f]:face_offsets[f+1]``.
    """

    vertices: np.ndarray
    uvs: np.ndarray
    face_vertices: np.ndarray
    face_uvs: np.ndarray
    face_offsets: np.ndarray

    @property
    def num_faces(self) -> int:
        return int(self.face_offsets.shape[0] - 1)

    def face_sizes(self) -> np.ndarray:
        """(F,) number of corners of each polygon."""
        return np.diff(self.face_offsets)


_V_RE = re.compile(rb"^v[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", re.M)
_VT_RE = re.compile(rb"^vt[ \t]+(\S+)[ \t]+(\S+)", re.M)
_F_RE = re.compile(rb"^f[ \t]+([^\r\n]+)", re.M)


def _floats(matches: list, name: str, cols: int) -> np.ndarray:
    if not matches:
        return np.zeros((0, cols), dtype=np.float64)
    try:
        return np.array(matches, dtype=np.bytes_).astype(np.float64)
    except ValueError as exc:
        raise AssetError(f"{name}: a vertex line holds a value that is not a number ({exc})") from None


def read_obj(data: bytes, name: str = "<obj>", faces: bool = True) -> ObjMesh:
    """Parse the geometry of a Wavefront OBJ (``v``, ``vt`` and ``f`` records).

    Normals, groups and materials are ignored. Negative (relative) indices are resolved.

    Args:
        data: the file's bytes.
        name: used in error messages.
        faces: parse ``vt`` and ``f`` too (False reads vertices only, ~10x faster).

    Raises:
        AssetError: malformed records or indices out of range.
    """
    vertices = _floats(_V_RE.findall(data), name, 3)
    if not faces:
        empty_i = np.zeros(0, dtype=np.int32)
        return ObjMesh(vertices, np.zeros((0, 2)), empty_i, empty_i, np.zeros(1, dtype=np.int64))
    uvs = _floats(_VT_RE.findall(data), name, 2)
    fv, ft, offsets = [], [], [0]
    nv, nt = len(vertices), len(uvs)
    for line in _F_RE.findall(data):
        corners = line.split()
        if len(corners) < 3:
            raise AssetError(f"{name}: a face with fewer than 3 corners: {line[:60]!r}")
        for c in corners:
            parts = c.split(b"/")
            try:
                vi = int(parts[0])
                ti = int(parts[1]) if len(parts) > 1 and parts[1] else 0
            except ValueError:
                raise AssetError(f"{name}: malformed face corner {c!r}") from None
            fv.append(vi - 1 if vi > 0 else nv + vi)
            ft.append((ti - 1 if ti > 0 else nt + ti) if ti != 0 else -1)
        offsets.append(len(fv))
    face_vertices = np.asarray(fv, dtype=np.int32)
    face_uvs = np.asarray(ft, dtype=np.int32)
    if face_vertices.size and (face_vertices.min() < 0 or face_vertices.max() >= nv):
        raise AssetError(f"{name}: a face refers to a vertex that does not exist")
    if face_uvs.size and face_uvs.max() >= nt:
        raise AssetError(f"{name}: a face refers to a texture coordinate that does not exist")
    return ObjMesh(vertices, uvs, face_vertices, face_uvs, np.asarray(offsets, dtype=np.int64))


# --------------------------------------------------------------------------------------------
# Sources of the upstream files
# --------------------------------------------------------------------------------------------

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(name: str, data: bytes, origin: str) -> bytes:
    """Check one upstream file against :data:`FILE_SHA256`; return it unchanged."""
    expected = FILE_SHA256.get(name)
    if expected is None:
        raise AssetError(f"{name} is not a file of ICT-FaceKit that this package uses")
    got = sha256_bytes(data)
    if got != expected:
        raise AssetError(
            f"ICT-FaceKit file {name} from {origin} has sha256 {got}, expected {expected}: it is "
            f"altered or not from upstream commit {ICT_COMMIT}. Point ICT_FACEKIT_DIR at an "
            f"unmodified copy of that commit (folder or archive) and run `make setup` again.")
    return data


def _strip_top(member_name: str) -> str:
    """'ICT-FaceKit-<sha>/FaceXModel/x.obj' -> 'FaceXModel/x.obj' (archives have one top folder)."""
    parts = member_name.split("/", 1)
    return parts[1] if len(parts) == 2 else parts[0]


def iter_upstream_files(location: Path, wanted: Iterable[str]) -> Iterator[Tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for each wanted upstream file at ``location``, verified.

    ``location`` is an unpacked upstream folder, a folder holding one upstream archive, or an
    archive (.tar.xz / .tar.gz). Archives are read in one sequential pass.

    Raises:
        AssetError: a file is missing or fails its sha256 check.
    """
    wanted = set(wanted)
    location = Path(location)
    if location.is_dir() and (location / "FaceXModel").is_dir():
        for name in sorted(wanted):
            path = location / name
            if not path.is_file():
                raise AssetError(f"ICT-FaceKit file {name} is missing in {location}")
            yield name, verify(name, path.read_bytes(), str(path))
        return
    if location.is_dir():
        archives = sorted(p for p in location.iterdir()
                          if p.name.endswith((".tar.xz", ".tar.gz", ".tgz", ".tar")))
        if not archives:
            raise AssetError(f"{location} holds neither FaceXModel/ nor an ICT-FaceKit archive")
        location = archives[0]
    if not location.is_file():
        raise AssetError(f"ICT-FaceKit source {location} does not exist")
    try:
        with tarfile.open(location, "r:*") as tar:
            for member in tar:
                name = _strip_top(member.name)
                if member.isfile() and name in wanted:
                    fh = tar.extractfile(member)
                    yield name, verify(name, fh.read(), f"{location}:{member.name}")
                    wanted.discard(name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AssetError(f"cannot read the ICT-FaceKit archive {location}: {exc}") from None
    if wanted:
        raise AssetError(f"the archive {location} lacks {len(wanted)} ICT-FaceKit files, "
                         f"e.g. {sorted(wanted)[0]}")


def repository_root() -> Path:
    """The source checkout this module lives in (for ../shared); meaningless once installed."""
    return Path(__file__).resolve().parents[3]


def find_source(download_dir: Optional[Path] = None) -> Path:
    """Locate the upstream files (see the module docstring for the order).

    Raises:
        AssetError: nothing found and the download failed.
    """
    env = os.environ.get("ICT_FACEKIT_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise AssetError(f"ICT_FACEKIT_DIR={env} does not exist; unset it or point it at an "
                             f"ICT-FaceKit folder or archive of commit {ICT_COMMIT}")
        return path
    shared = repository_root().parent / "shared" / "assets" / "ict-facekit"
    if shared.is_dir():
        return shared
    return download_archive(download_dir or default_cache_dir())


def download_archive(directory: Path, url: str = ICT_ARCHIVE_URL, timeout: float = 60.0) -> Path:
    """Download the upstream archive at :data:`ICT_COMMIT` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"ICT-FaceKit-{ICT_COMMIT}.tar.gz"
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, \
                tempfile.NamedTemporaryFile(dir=directory, delete=False) as tmp:
            shutil.copyfileobj(resp, tmp)
        os.replace(tmp.name, target)
    except OSError as exc:
        raise AssetError(
            f"ICT-FaceKit not found locally and the download of {url} failed ({exc}). Download "
            f"that archive by hand (or clone {ICT_REPO} at {ICT_COMMIT}) and set "
            f"ICT_FACEKIT_DIR to it, then run `make setup` again.") from None
    return target


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    env = os.environ.get("FACEDIFF_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facediff_ros"


def cache_path(cache_dir: Optional[Path] = None) -> Path:
    """Folder of the converted model: ``model.npz``, ``LICENSE``, ``manifest.json``."""
    return Path(cache_dir or default_cache_dir()) / CACHE_NAME


def build_cache(source: Optional[Path] = None, cache_dir: Optional[Path] = None,
                log: Callable[[str], None] = lambda s: None) -> Path:
    """Convert the verified upstream OBJs into ``model.npz`` (atomic; returns the folder).

    Arrays in the file (upstream units, centimetres):
        neutral (V, 3) float32; identity_deltas (100, V, 3) float32 and expression_deltas
        (E, V, 3) float32 (upstream shapes are whole meshes; deltas = shape - neutral); uvs
        (T, 2); face_vertices / face_uvs / face_offsets (polygons, see :class:`ObjMesh`);
        expression_names (E,); vertex_indices_json (the upstream json text).
    """
    source = Path(source) if source is not None else find_source()
    out = cache_path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"reading ICT-FaceKit from {source}")
    blobs: Dict[str, bytes] = {}
    for name, data in iter_upstream_files(source, FILE_SHA256):
        blobs[name] = data
    meta = json.loads(blobs[VERTEX_INDICES_JSON])
    expression_names = list(meta["expressions"])
    neutral = read_obj(blobs.pop(NEUTRAL_OBJ), NEUTRAL_OBJ)
    num_v = neutral.vertices.shape[0]

    def deltas(names):
        arr = np.empty((len(names), num_v, 3), dtype=np.float32)
        for i, n in enumerate(names):
            v = read_obj(blobs.pop(n), n, faces=False).vertices
            if v.shape != (num_v, 3):
                raise AssetError(f"{n} has {v.shape[0]} vertices, the neutral mesh {num_v}")
            arr[i] = v - neutral.vertices  # (V, 3)
        return arr

    identity = deltas([f"FaceXModel/identity{i:03d}.obj" for i in range(NUM_IDENTITIES)])
    expression = deltas([f"FaceXModel/{n}.obj" for n in expression_names])
    tmp = out / "model.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez_compressed(
            fh, neutral=neutral.vertices.astype(np.float32), identity_deltas=identity,
            expression_deltas=expression, uvs=neutral.uvs.astype(np.float32),
            face_vertices=neutral.face_vertices, face_uvs=neutral.face_uvs,
            face_offsets=neutral.face_offsets, expression_names=np.array(expression_names),
            vertex_indices_json=np.array(blobs[VERTEX_INDICES_JSON].decode("utf-8")))
    os.replace(tmp, out / "model.npz")
    (out / "LICENSE").write_bytes(blobs[LICENSE_FILE])
    manifest = {"model": "ICT-FaceKit Light", "repository": ICT_REPO, "commit": ICT_COMMIT,
                "licence": "MIT, Copyright (c) 2020 USC Institute for Creative Technologies",
                "cache_format": CACHE_FORMAT, "source": str(source),
                "model_npz_sha256": sha256_bytes((out / "model.npz").read_bytes())}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out / 'model.npz'} ({(out / 'model.npz').stat().st_size / 1e6:.1f} MB)")
    return out


def cache_is_valid(cache_dir: Optional[Path] = None) -> bool:
    """True when the cache exists and ``model.npz`` matches its manifest."""
    folder = cache_path(cache_dir)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        return (manifest.get("commit") == ICT_COMMIT
                and manifest.get("cache_format") == CACHE_FORMAT
                and (folder / "LICENSE").is_file()
                and sha256_bytes((folder / "model.npz").read_bytes())
                == manifest.get("model_npz_sha256"))
    except (OSError, ValueError):
        return False


def ensure_cache(cache_dir: Optional[Path] = None, log: Callable[[str], None] = lambda s: None) -> Path:
    """Build the cache unless a valid one exists; return its folder."""
    if cache_is_valid(cache_dir):
        return cache_path(cache_dir)
    return build_cache(cache_dir=cache_dir, log=log)


def load_cache(cache_dir: Optional[Path] = None) -> Dict[str, np.ndarray]:
    """Load ``model.npz`` as a dict of arrays (see :func:`build_cache`).

    Raises:
        AssetError: no cache yet, or it does not match its manifest.
    """
    folder = cache_path(cache_dir)
    if not (folder / "model.npz").is_file():
        raise AssetError(f"no ICT-FaceKit cache at {folder}: run `make setup` (or "
                         f"`facediff assets`) to convert the face model first")
    with np.load(folder / "model.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
