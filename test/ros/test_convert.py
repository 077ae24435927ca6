"""ros/convert.py: messages ↔ numpy and structs, no DDS."""

import numpy as np
import pytest
from geometry_msgs.msg import Point32, PointStamped, PolygonStamped
from sensor_msgs.msg import Image, PointField
from visualization_msgs.msg import Marker

from surg_invnerf_ros.errors import InputError
from surg_invnerf_ros.ros import convert
from surg_invnerf_ros.structs import StereoCalib

CALIB = StereoCalib(K=np.array([[100.0, 0, 31.5], [0, 101.0, 23.5], [0, 0, 1]]), baseline_m=0.004,
                    image_size=(64, 48))


def padded_image(arr: np.ndarray, encoding: str, pad: int) -> Image:
    """An Image whose rows carry `pad` junk bytes (step > width·channels·itemsize)."""
    H = arr.shape[0]
    raw = arr.reshape(H, -1).view(np.uint8)
    rows = np.concatenate([raw, np.full((H, pad), 0xAB, np.uint8)], axis=1)
    return Image(height=H, width=arr.shape[1], encoding=encoding, step=rows.shape[1], data=rows.tobytes())


class TestStamps:
    def test_round_trip(self):
        ns = 1_700_000_123_456_789_012
        assert convert.stamp_ns(convert.to_stamp(ns)) == ns
        h = convert.header(ns, "left")
        assert h.stamp.sec == 1_700_000_123 and h.stamp.nanosec == 456_789_012 and h.frame_id == "left"


class TestImage:
    @pytest.mark.parametrize("encoding,shape,dtype", [
        ("rgb8", (48, 64, 3), np.uint8), ("bgr8", (48, 64, 3), np.uint8), ("mono8", (48, 64), np.uint8),
        ("mono16", (48, 64), np.uint16), ("16UC1", (48, 64), np.uint16), ("32FC1", (48, 64), np.float32)])
    def test_round_trip(self, encoding, shape, dtype):
        rng = np.random.default_rng(1)
        arr = (rng.random(shape) * (1 if dtype == np.float32 else np.iinfo(dtype).max)).astype(dtype)
        msg = convert.numpy_to_image(arr, encoding, 5, "f")
        back = convert.image_to_numpy(msg)
        np.testing.assert_array_equal(back.reshape(shape), arr)

    @pytest.mark.parametrize("encoding", ["rgb8", "mono16", "32FC1"])
    def test_step_padding_is_honoured(self, encoding):
        rng = np.random.default_rng(2)
        dtype, ch = convert.ENCODINGS[encoding]
        arr = (rng.random((5, 7, ch)) * 200).astype(dtype)
        msg = padded_image(arr, encoding, pad=6)
        assert msg.step == 7 * ch * dtype.itemsize + 6
        np.testing.assert_array_equal(convert.image_to_numpy(msg), arr)

    def test_rgb_from_every_encoding(self):
        rgb = np.zeros((2, 3, 3), np.uint8)
        rgb[..., 0] = 200  # red
        assert (convert.image_to_rgb_u8(convert.numpy_to_image(rgb, "rgb8")) == rgb).all()
        assert (convert.image_to_rgb_u8(convert.numpy_to_image(rgb[..., ::-1].copy(), "bgr8")) == rgb).all()
        mono = convert.image_to_rgb_u8(convert.numpy_to_image(np.full((2, 3), 7, np.uint8), "mono8"))
        assert mono.shape == (2, 3, 3) and (mono == 7).all()
        m16 = convert.image_to_rgb_u8(convert.numpy_to_image(np.full((2, 3), 0x1234, np.uint16), "mono16"))
        assert (m16 == 0x12).all()  # the top byte
        f32 = convert.image_to_rgb_u8(convert.numpy_to_image(np.full((2, 3), 0.5, np.float32), "32FC1"))
        assert (f32 == 128).all()  # 0.5·255 rounded

    def test_big_endian_16bit(self):
        arr = np.array([[0x0102, 0x0304]], np.uint16)
        msg = Image(height=1, width=2, encoding="mono16", is_bigendian=1, step=4, data=arr.astype(">u2").tobytes())
        np.testing.assert_array_equal(convert.image_to_numpy(msg)[..., 0], arr)

    def test_wrong_encoding(self):
        msg = convert.numpy_to_image(np.zeros((2, 2, 3), np.uint8), "rgb8")
        msg.encoding = "yuv422"
        with pytest.raises(InputError, match="Image: encoding: unsupported 'yuv422'") as err:
            convert.image_to_numpy(msg)
        assert err.value.reason == "wrong_encoding"

    def test_data_shorter_than_height_times_step(self):
        msg = convert.numpy_to_image(np.zeros((4, 5, 3), np.uint8), "rgb8")
        msg.data = msg.data[:-1]
        with pytest.raises(InputError, match="height×step") as err:
            convert.image_to_numpy(msg)
        assert err.value.reason == "data_too_short"

    def test_step_shorter_than_a_row(self):
        msg = convert.numpy_to_image(np.zeros((4, 5, 3), np.uint8), "rgb8")
        msg.step = 14
        with pytest.raises(InputError, match="Image: step") as err:
            convert.image_to_numpy(msg)
        assert err.value.reason == "bad_step"

    def test_empty(self):
        with pytest.raises(InputError, match="empty") as err:
            convert.image_to_numpy(Image(height=0, width=0, encoding="rgb8"))
        assert err.value.reason == "empty_image"


class TestCameraInfo:
    def test_round_trip_and_baseline_from_right_p(self):
        il, ir = convert.calib_to_camera_info(CALIB, 7, "l", "r")
        assert ir.p[3] == pytest.approx(-100.0 * 0.004)  # Tx = −fx·B
        calib = convert.camera_info_to_calib(il, ir)
        np.testing.assert_allclose(calib.K, CALIB.K)
        assert calib.baseline_m == pytest.approx(0.004) and calib.image_size == (64, 48)

    def test_k_all_zero(self):
        il, ir = convert.calib_to_camera_info(CALIB)
        il.k = [0.0] * 9
        with pytest.raises(InputError, match=r"CameraInfo \(left\): k: all zero") as err:
            convert.camera_info_to_calib(il, ir)
        assert err.value.reason == "camera_info_k_zero"

    def test_no_baseline(self):
        il, ir = convert.calib_to_camera_info(CALIB)
        p = list(ir.p)
        p[3] = 0.0
        ir.p = p
        with pytest.raises(InputError, match="Tx") as err:
            convert.camera_info_to_calib(il, ir)
        assert err.value.reason == "camera_info_no_baseline"

    def test_size_mismatch(self):
        il, ir = convert.calib_to_camera_info(CALIB)
        ir.width = 32
        with pytest.raises(InputError, match="sizes differ") as err:
            convert.camera_info_to_calib(il, ir)
        assert err.value.reason == "camera_info_size_mismatch"

    def test_p_empty_falls_back_to_k_for_intrinsics(self):
        il, ir = convert.calib_to_camera_info(CALIB)
        il.p = [0.0] * 12
        np.testing.assert_allclose(convert.camera_info_to_calib(il, ir).K, CALIB.K)

    def test_stereo_image_checks(self):
        a = np.zeros((48, 64, 3), np.uint8)
        convert.check_stereo_images(a, a, CALIB)
        with pytest.raises(InputError) as err:
            convert.check_stereo_images(a, a[:, :60], CALIB)
        assert err.value.reason == "stereo_size_mismatch"
        with pytest.raises(InputError) as err:
            convert.check_stereo_images(a[:40], a[:40], CALIB)
        assert err.value.reason == "camera_info_size_mismatch"


class TestPointCloud:
    def test_tracked_points_round_trip(self):
        ids = np.array([3, 7, 11])
        uv = np.array([[1.5, 2.5], [3.0, 4.0], [5.0, 6.0]])
        xyz = np.array([[0.01, 0.02, 0.1], [np.nan, np.nan, np.nan], [0.0, 0.0, 0.2]])
        vis = np.array([True, False, True])
        msg = convert.tracked_points_msg(ids, uv, xyz, vis, np.array([1.0, 0.0, 0.5]), np.array([1, 0, 0]),
                                         convert.header(9, "left"))
        assert [f.name for f in msg.fields] == ["x", "y", "z", "u", "v", "id", "visible", "confidence", "refined"]
        assert {f.name: f.datatype for f in msg.fields}["id"] == PointField.UINT32
        assert msg.point_step == 30 and [f.offset for f in msg.fields][-3:] == [24, 25, 29]
        assert msg.width == 3 and not msg.is_dense
        back = convert.tracked_points_from_msg(msg)
        assert back["id"].tolist() == [3, 7, 11] and back["visible"].tolist() == [1, 0, 1]
        np.testing.assert_allclose(back["u"], uv[:, 0])
        assert np.isnan(back["x"][1]) and back["z"][2] == pytest.approx(0.2)
        assert back["refined"].tolist() == [1, 0, 0]

    def test_unpack_with_padding_and_missing_fields(self):
        dt = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 16})
        pts = np.zeros(2, dt)
        pts["z"] = [1.0, 2.0]
        msg = convert.pack_cloud(pts, convert.header(0, "f"))
        assert msg.point_step == 16
        np.testing.assert_allclose(convert.cloud_to_struct(msg)["z"], [1.0, 2.0])
        with pytest.raises(InputError, match="missing u, v, id") as err:
            convert.tracked_points_from_msg(msg)
        assert err.value.reason == "bad_cloud"

    def test_short_data_is_refused(self):
        msg = convert.pack_cloud(np.zeros(3, convert.CLOUD_DTYPE), convert.header(0, "f"))
        msg.data = msg.data[:-1]
        with pytest.raises(InputError, match="PointCloud2: data"):
            convert.cloud_to_struct(msg)

    def test_xyzrgb(self):
        xyz = np.array([[0.0, 0.0, 1.0]])
        msg = convert.xyzrgb_cloud_msg(xyz, np.array([[255, 128, 1]], np.uint8), convert.header(0, "f"))
        rgb = convert.cloud_to_struct(msg)["rgb"].view(np.uint32)
        assert rgb[0] == (255 << 16) | (128 << 8) | 1

    def test_depth_to_points(self):
        depth = np.full((48, 64), np.nan, np.float32)
        depth[23, 31] = 0.5  # one pixel, not on the principal point
        rgb = np.zeros((48, 64, 3), np.uint8)
        xyz, col = convert.depth_to_points(depth, rgb, CALIB.K)
        # x = (31 - 31.5)/100·0.5, y = (23 - 23.5)/101·0.5
        np.testing.assert_allclose(xyz, [[-0.0025, -0.5 * 0.5 / 101, 0.5]], rtol=1e-6)
        assert len(convert.depth_to_points(depth, rgb, CALIB.K, stride_px=2)[0]) == 0  # 23 is odd


class TestMarkers:
    def test_spheres_labels_trails(self):
        ids = np.array([4, 5])
        xyz = np.array([[0.0, 0.0, 0.1], [np.nan, 0.0, 0.1]])
        trails = {4: np.array([[0.0, 0.0, 0.09], [0.0, 0.0, 0.1]])}
        msg = convert.markers_msg(ids, xyz, np.array([True, True]), np.array([True, False]), trails,
                                  convert.header(3, "left"))
        types = [m.type for m in msg.markers]
        assert msg.markers[0].action == Marker.DELETEALL
        assert types.count(Marker.SPHERE_LIST) == 1 and len(msg.markers[1].points) == 1  # NaN point skipped
        labels = [m for m in msg.markers if m.type == Marker.TEXT_VIEW_FACING]
        assert [m.text for m in labels] == ["4"]
        assert [len(m.points) for m in msg.markers if m.type == Marker.LINE_STRIP] == [2]
        assert all(m.header.frame_id == "left" and m.header.stamp.nanosec == 3 for m in msg.markers)


class TestQueries:
    def test_polygon(self):
        msg = PolygonStamped()
        msg.polygon.points = [Point32(x=1.0, y=2.0), Point32(x=3.5, y=4.0)]
        np.testing.assert_allclose(convert.polygon_to_uv_px(msg, (64, 48)), [[1, 2], [3.5, 4]])
        msg.polygon.points = [Point32(x=70.0, y=2.0)]
        with pytest.raises(InputError, match="outside the 64x48 image") as err:
            convert.polygon_to_uv_px(msg, (64, 48))
        assert err.value.reason == "queries_outside_image"
        with pytest.raises(InputError, match="empty"):
            convert.polygon_to_uv_px(PolygonStamped())

    def test_clicked_point_projects(self):
        msg = PointStamped()
        msg.point.x, msg.point.y, msg.point.z = 0.01, -0.005, 0.1
        # u = 100·0.01/0.1 + 31.5 = 41.5 ; v = 101·(−0.005)/0.1 + 23.5 = 18.45
        np.testing.assert_allclose(convert.point_to_uv_px(msg, CALIB), [[41.5, 18.45]])
        T = np.eye(4)
        T[0, 3] = -0.01  # the point's frame sits 1 cm to the left
        np.testing.assert_allclose(convert.point_to_uv_px(msg, CALIB, T), [[31.5, 18.45]])
        msg.point.z = -0.1
        with pytest.raises(InputError, match="outside") as err:
            convert.point_to_uv_px(msg, CALIB)
        assert err.value.reason == "clicked_point_outside_image"
