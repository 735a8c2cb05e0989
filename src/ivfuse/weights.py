"""Known pretrained weights: where they come from, their checksums, and how to point ivfuse at a local copy.

Resolution order for a name in :data:`WEIGHTS` (see :func:`weights_path`):

1. an explicit local file (``weights=...`` / ``--weights``);
2. the file in the shared weights folder (``$IVFUSE_SHARED/weights`` or ``../shared/weights``);
3. the ivfuse cache (``$IVFUSE_CACHE`` or ``~/.cache/ivfuse``), downloaded from ``url`` if a URL is known and
   checked against ``sha256`` before it is used.

YOLOv5 release files (``yolov5s.pt``) are pickled models that cannot be loaded with
``torch.load(weights_only=True)``; convert them once (see :mod:`ivfuse.tasks.yolov5`) and pass the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .utils import resolve_file, shared_root

__all__ = ["WeightsInfo", "WEIGHTS", "weights_path"]

#: the VIF-Benchmark collection copy the TF peers' checkpoints were read from (pinned commit)
_TF_COLLECTION = "https://github.com/ycc568/my-seafusion/tree/cff58e5c005f5b189010b5de5f5869277852dfa8/Checkpoint/"


@dataclass(frozen=True)
class WeightsInfo:
    name: str
    filename: str
    description: str
    url: str | None = None
    sha256: str | None = None


WEIGHTS = {
    w.name: w
    for w in [
        WeightsInfo(
            "yolov5n_coco",
            "yolov5n_coco_v6.1_state_dict.pt",
            "YOLOv5n v6.1 COCO (80 classes) as {state_dict, yaml, names}; converted from the official release",
            None,
            "5056833b0bee2f05ee1d875d8dfc4e1990dc43aab8da556cd6074c9c3d4ec3bd",
        ),
        WeightsInfo(
            "espnetv2_city",
            "espnetv2_s2.0_cityscapes_1024x512.pth",
            "ESPNetv2 s=2.0 Cityscapes 1024x512 (EdgeNets model zoo)",
            "https://github.com/sacmehta/EdgeNets/raw/master/model/segmentation/model_zoo/espnetv2/espnetv2_s_2.0_city_1024x512.pth",
            "a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8",
        ),
        WeightsInfo(
            "vgg16_features",
            "vgg16_features_imagenet_fp16.pth",
            "ImageNet VGG16 convolutional layers (torchvision vgg16().features keys), float16",
            None,
            "9a4afbc2b31a88b59c492c881249cd109fd7950326a00fbcc8054bed791bb89e",
        ),
        WeightsInfo(
            "mobile_sam",
            "mobile_sam.pt",
            "MobileSAM (TinyViT vit_t image encoder)",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        ),
        # peers: VIF-Benchmark collection copy ycc568/my-seafusion, pinned commit (same bytes as
        # ../shared/weights/peers)
        WeightsInfo(
            "seafusion",
            "peers/SeAFusion_SeAFusion.pth",
            "SeAFusion fusion network (Tang et al. 2022), official state dict",
            "https://github.com/ycc568/my-seafusion/raw/cff58e5c005f5b189010b5de5f5869277852dfa8/Checkpoint/SeAFusion/SeAFusion.pth",
            "8d65a7f9a50f36349803368cf9920f40420776995e7e8cc8a56d8d30e499431d",
        ),
        WeightsInfo(
            "tardal",
            "peers/TarDAL_tardal.pt",
            "TarDAL generator, variant tardal (Liu et al. 2022), official state dict",
            "https://github.com/ycc568/my-seafusion/raw/cff58e5c005f5b189010b5de5f5869277852dfa8/Checkpoint/TarDAL/tardal.pt",
            "e0fa61e25cffa9fb14ff17b47ea7ba237a6e8c6f37e1b9b115d63354ff0f13e1",
        ),
        WeightsInfo(
            "tardal+",
            "peers/TarDAL_tardal+.pt",
            "TarDAL generator, variant tardal+ (Liu et al. 2022), official state dict",
            "https://github.com/ycc568/my-seafusion/raw/cff58e5c005f5b189010b5de5f5869277852dfa8/Checkpoint/TarDAL/tardal%2B.pt",
            "cff3756548b511e3e415616debc557cdc85b3bb19393ca158cac8d08f232897c",
        ),
        WeightsInfo(
            "tardal++",
            "peers/TarDAL_tardal++.pt",
            "TarDAL generator, variant tardal++ (Liu et al. 2022), official state dict",
            "https://github.com/ycc568/my-seafusion/raw/cff58e5c005f5b189010b5de5f5869277852dfa8/Checkpoint/TarDAL/tardal%2B%2B.pt",
            "7009d125e36db043d6918d9358e10c6dca7fdf2dd08ada09c5ecd294f45f98c5",
        ),
        WeightsInfo(
            "ifcnn_max",
            "peers/IFCNN_IFCNN-MAX.pth",
            "IFCNN-MAX (Zhang et al. 2020) incl. frozen ResNet-101 conv1, official state dict",
            "https://github.com/ycc568/my-seafusion/raw/cff58e5c005f5b189010b5de5f5869277852dfa8/Checkpoint/IFCNN/IFCNN-MAX.pth",
            "6022b44c88a2f0367ba9b08fcdf0d663745d9a966fca0ee1f41867797b6ff53f",
        ),
        WeightsInfo(
            "didfuse_encoder",
            "peers/DIDFuse_Encoder.pkl",
            "DIDFuse encoder (Zhao et al. 2020), official {'weight', 'epoch'}",
            "https://github.com/ycc568/my-seafusion/raw/cff58e5c005f5b189010b5de5f5869277852dfa8/Checkpoint/DIDFuse/Encoder.pkl",
            "4d84a4e64e58469d3d4591f83c6683ead3e422498519db99bb617cb29d268471",
        ),
        WeightsInfo(
            "didfuse_decoder",
            "peers/DIDFuse_Decoder.pkl",
            "DIDFuse decoder (Zhao et al. 2020), official {'weight', 'epoch'}",
            "https://github.com/ycc568/my-seafusion/raw/cff58e5c005f5b189010b5de5f5869277852dfa8/Checkpoint/DIDFuse/Decoder.pkl",
            "c6974e2a7c66ab579a77bacb086023237a229e769d459783bad8ff43e52e9986",
        ),
        WeightsInfo(
            "sage",
            "peers/SAGE_checkpoints.pt",
            "SAGE sub-network (Wu et al. CVPR 2025), official state dict (RollingPlain/SAGE_IVIF, MIT)",
            # the authors keep the file in their repository (not LFS): pinned to the commit that added it
            "https://github.com/RollingPlain/SAGE_IVIF/raw/5960bb04bae7db3a975014e1827fd0696ab8e65a/checkpoints/checkpoints.pt",
            "ecfde477ca4cd65401f207d5dc91ce6c475a49891d768dbdb7a66366255ee836",
        ),
        # TF peers: every variable of the collection's TF checkpoint as an .npz (no published download of these files)
        *(
            WeightsInfo(
                key,
                f"peers/{fname}",
                f"{what}: every variable of the TF checkpoint {_TF_COLLECTION}{ckpt} as float32 "
                "arrays (np.load, no TensorFlow)",
                None,
                sha,
            )
            for key, fname, what, ckpt, sha in [
                (
                    "u2fusion",
                    "U2Fusion.npz",
                    "U2Fusion (Xu et al. TPAMI 2022)",
                    "U2Fusion/model.ckpt",
                    "70554ff33dc1b5d06f76e4b83da194a9f1013cc1ccca6052c93a275b9c6ed4bd",
                ),
                (
                    "stdfusionnet",
                    "STDFusionNet.npz",
                    "STDFusionNet (Ma et al. TIM 2021)",
                    "STDFusionNet/Fusion.model-29",
                    "c210db29ae2cdcca1299ff54981a54ccfbe15b49182cb5fbd8fdd0b30e6aca76",
                ),
                (
                    "sdnet",
                    "SDNet.npz",
                    "SDNet (Zhang & Ma, IJCV 2021)",
                    "SDNet/SDNet.model",
                    "31236b2538d8587824126fb2387c102a254b26340cdf801ca8cdce276929869a",
                ),
                (
                    "pmgi",
                    "PMGI.npz",
                    "PMGI (Zhang et al. AAAI 2020)",
                    "PMGI/PMGI",
                    "d91866ad2136931c2643314723570f00a036593ece1b1a8fecd3626ed3b44acd",
                ),
                (
                    "csf_ec",
                    "CSF_EC.npz",
                    "CSF encoder + classifier (Xu et al. TCI 2021)",
                    "CSF/EC.ckpt",
                    "115c2047b7c432a33c903201918e1ba82014551ad682da1960f39becdf7bfa6a",
                ),
                (
                    "csf_ed",
                    "CSF_ED.npz",
                    "CSF encoder + decoder (Xu et al. TCI 2021)",
                    "CSF/ED.ckpt",
                    "9d85edf5dcdcd3af874e2cb2ee476f5aa14b2eb33532ae060996a2518edcefac",
                ),
                (
                    "densefuse",
                    "DenseFuse.npz",
                    "DenseFuse (Li & Wu, TIP 2019)",
                    "DenseFuse/DeseFuse.ckpt",
                    "3e7dd99dbb8b0225c20ae7cff4d5b0e0acfbc5d239353079e3bfeca0530fc8ec",
                ),
            ]
        ),
    ]
}


def weights_path(name: str, local: str | Path | None = None) -> Path:
    """Path of the weights ``name`` (see module docstring for the resolution order)."""
    if local is not None:
        return resolve_file(local)
    if name not in WEIGHTS:
        raise InputError(f"unknown weights '{name}' (known: {', '.join(WEIGHTS)})")
    info = WEIGHTS[name]
    shared = shared_root() / "weights" / info.filename
    if shared.is_file():
        return shared
    if info.url is None:
        raise InputError(
            f"weights '{name}' ({info.filename}) not found in {shared.parent} and no download URL is known; "
            "pass the file path"
        )
    return resolve_file(None, url=info.url, sha256=info.sha256, filename=Path(info.filename).name)
